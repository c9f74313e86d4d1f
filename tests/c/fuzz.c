/* Random strings and sizes through every entry point of libtelemetry.
 * Usage: fuzz CONFIG SEED ITERATIONS
 * Run under valgrind by the tests: no invalid access, no leak. Exits 1 if
 * a call answers with a code its manual page does not list. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <telemetry.h>

static uint64_t state;

static uint64_t next(void)
{
        /* xorshift64* */
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        return state * 2685821657736338717ULL;
}

/* A NUL-terminated string of random length and bytes. */
static char *random_bytes(void)
{
        size_t len, i;
        char *s;

        switch (next() % 4) {
        case 0: len = next() % 8; break;
        case 1: len = 100 + next() % 40; break;
        case 2: len = 8180 + next() % 30; break;
        default: len = next() % 20000; break;
        }
        s = malloc(len + 1);
        for (i = 0; i < len; i++)
                s[i] = (char)(next() % 255 + 1);
        s[len] = '\0';
        return s;
}

/* Printable ASCII of length 0..max, now and then a tab or newline. */
static char *random_text(size_t max, int whitespace)
{
        size_t len = next() % (max + 1), i;
        char *s = malloc(len + 1);

        for (i = 0; i < len; i++) {
                s[i] = (char)('!' + next() % 94);
                if (whitespace && next() % 16 == 0)
                        s[i] = next() % 2 ? '\n' : '\t';
        }
        s[len] = '\0';
        return s;
}

/* Half the time something shaped like a classification (parts of up to
 * 45 bytes, so some are over the 40-byte limit), else random bytes. */
static char *random_classification(void)
{
        char *a, *b, *c, *s;

        if (next() % 2)
                return random_bytes();
        a = random_text(45, 0);
        b = random_text(45, 0);
        c = random_text(45, 0);
        s = malloc(strlen(a) + strlen(b) + strlen(c) + 3);
        sprintf(s, "%s/%s/%s", a, b, c);
        free(a);
        free(b);
        free(c);
        return s;
}

/* Half the time 32 lowercase hex digits (now and then one off). */
static char *random_event_id(void)
{
        static const char hex[] = "0123456789abcdefg";
        size_t len, i;
        char *s;

        if (next() % 2)
                return random_bytes();
        len = 31 + next() % 3;
        s = malloc(len + 1);
        for (i = 0; i < len; i++)
                s[i] = hex[next() % (next() % 64 ? 16 : 17)];
        s[len] = '\0';
        return s;
}

/* Half the time printable text of up to 12,000 bytes, else random bytes. */
static char *random_payload(void)
{
        return next() % 2 ? random_text(12000, 1) : random_bytes();
}

static int documented(int rc)
{
        return rc == 0 || rc == -EINVAL || rc == -ENOMEM || rc == -ECONNREFUSED ||
               rc == -ENOENT || rc == -ETIMEDOUT || rc == -EPIPE || rc == -ENAMETOOLONG ||
               rc == -ENOTDIR || rc == -EACCES || rc == -ELOOP;
}

int main(int argc, char **argv)
{
        long i, iterations, created = 0, sent = 0;
        int bad = 0;

        if (argc != 4)
                return 100;
        state = strtoull(argv[2], NULL, 10) | 1;
        iterations = strtol(argv[3], NULL, 10);
        if (tm_set_config_file(argv[1]) != 0)
                return 101;
        for (i = 0; i < iterations; i++) {
                struct telem_ref *ref = NULL;
                char *class = random_classification(), *payload = random_payload();
                char *id = random_event_id(), *path = random_bytes();
                int rc[5];

                rc[0] = tm_create_record(&ref, (uint32_t)next(), class, (uint32_t)next());
                rc[1] = tm_set_event_id(ref, id);
                rc[2] = tm_set_payload(ref, payload);
                int tried = next() % 4 == 0;

                rc[3] = tried ? tm_send_record(ref) : 0;
                rc[4] = next() % 32 == 0 ? tm_set_config_file(path) : 0;
                created += rc[0] == 0;
                /* A refused event id leaves the random one: still sendable. */
                sent += tried && rc[0] == 0 && rc[2] == 0 && rc[3] == 0;
                tm_free_record(ref);
                if (next() % 4 == 0)
                        tm_free_record(ref); /* a second free of the same handle */
                for (int k = 0; k < 5; k++) {
                        if (!documented(rc[k])) {
                                printf("iteration %ld call %d: undocumented %d\n", i, k, rc[k]);
                                bad = 1;
                        }
                }
                free(class);
                free(payload);
                free(id);
                free(path);
        }
        printf("%ld iterations, %ld created, %ld sent\n", iterations, created, sent);
        return bad;
}
