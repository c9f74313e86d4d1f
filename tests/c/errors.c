/* Every error path of libtelemetry, each with the return code its manual
 * page documents. Usage: errors CONFIG SCRATCH_DIR
 * CONFIG names a running, opted-in telemd; SCRATCH_DIR is any directory.
 * Prints one line per check; exits with the number of failed checks. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <telemetry.h>

static int failures;

static void expect(const char *what, int got, int want)
{
        if (got == want) {
                printf("ok   %s\n", what);
        } else {
                printf("FAIL %s: returned %d, documented %d\n", what, got, want);
                failures++;
        }
}

static char *repeat(char c, size_t n)
{
        char *s = malloc(n + 1);

        memset(s, c, n);
        s[n] = '\0';
        return s;
}

int main(int argc, char **argv)
{
        struct telem_ref *ref = (struct telem_ref *)0x1, *good = NULL;
        struct telem_ref forged = { 0 };
        char *long_class, *huge, *long_path;
        char class_41[64];

        if (argc != 3)
                return 100;

        /* tm_set_config_file */
        expect("config NULL", tm_set_config_file(NULL), -EINVAL);
        expect("config relative", tm_set_config_file("telemetrics.conf"), -EINVAL);
        expect("config missing", tm_set_config_file("/nonexistent/telemetrics.conf"), -ENOENT);
        expect("config a directory", tm_set_config_file(argv[2]), -EINVAL);
        long_path = repeat('a', 5000);
        long_path[0] = '/';
        expect("config path over PATH_MAX", tm_set_config_file(long_path), -ENAMETOOLONG);
        expect("config good", tm_set_config_file(argv[1]), 0);
        expect("config missing after good", tm_set_config_file("/nonexistent/x.conf"), -ENOENT);

        /* tm_create_record */
        expect("create t_ref NULL", tm_create_record(NULL, 1, "a/b/c", 1), -EINVAL);
        expect("create classification NULL", tm_create_record(&ref, 1, NULL, 1), -EINVAL);
        expect("failed create leaves NULL", ref == NULL, 1);
        expect("create one slash", tm_create_record(&ref, 1, "org.example/native", 1), -EINVAL);
        expect("create three slashes", tm_create_record(&ref, 1, "a/b/c/d", 1), -EINVAL);
        expect("create empty part", tm_create_record(&ref, 1, "a//c", 1), -EINVAL);
        expect("create space", tm_create_record(&ref, 1, "a/b c/d", 1), -EINVAL);
        expect("create non-UTF-8", tm_create_record(&ref, 1, "a/b/\xff\xfe", 1), -EINVAL);
        /* "a/" + 41 bytes + "/c" */
        memcpy(class_41, "a/", 2);
        memset(class_41 + 2, 'p', 41);
        class_41[43] = '/';
        class_41[44] = 'c';
        class_41[45] = '\0';
        expect("create part over 40 bytes", tm_create_record(&ref, 1, class_41, 1), -EINVAL);
        long_class = repeat('x', 123);
        long_class[10] = '/';
        long_class[60] = '/';
        expect("create classification over 122 bytes", tm_create_record(&ref, 1, long_class, 1), -EINVAL);
        huge = repeat('y', 64 << 20);
        expect("create 64 MiB classification", tm_create_record(&ref, 1, huge, 1), -EINVAL);
        expect("create good", tm_create_record(&good, 99, "org.example/native/errors", 1), 0);

        /* tm_set_event_id */
        expect("event id NULL", tm_set_event_id(good, NULL), -EINVAL);
        expect("event id 31 chars", tm_set_event_id(good, "0123456789abcdef0123456789abcde"), -EINVAL);
        expect("event id 33 chars", tm_set_event_id(good, "0123456789abcdef0123456789abcdef0"), -EINVAL);
        expect("event id upper case", tm_set_event_id(good, "0123456789ABCDEF0123456789abcdef"), -EINVAL);
        expect("event id 64 MiB", tm_set_event_id(good, huge), -EINVAL);
        expect("event id good", tm_set_event_id(good, "0123456789abcdef0123456789abcdef"), 0);

        /* tm_set_payload */
        expect("payload NULL", tm_set_payload(good, NULL), -EINVAL);
        expect("payload control byte", tm_set_payload(good, "bell\a"), -EINVAL);
        expect("payload non-UTF-8", tm_set_payload(good, "caf\xc3\x28"), -EINVAL);
        expect("payload 64 MiB (first 8192 bytes kept)", tm_set_payload(good, huge), 0);
        expect("payload good", tm_set_payload(good, "errors\n"), 0);

        /* handles the library did not hand out */
        expect("set payload NULL handle", tm_set_payload(NULL, "x"), -EINVAL);
        expect("set event id NULL handle", tm_set_event_id(NULL, "0123456789abcdef0123456789abcdef"), -EINVAL);
        expect("send NULL handle", tm_send_record(NULL), -EINVAL);
        expect("send forged handle", tm_send_record(&forged), -EINVAL);
        expect("payload forged handle", tm_set_payload(&forged, "x"), -EINVAL);
        tm_free_record(&forged);
        tm_free_record(NULL);

        /* the good record goes through, twice (a record stays valid) */
        expect("send good", tm_send_record(good), 0);
        expect("send good again", tm_send_record(good), 0);
        tm_free_record(good);
        /* freed: refused, never touched */
        expect("send after free", tm_send_record(good), -EINVAL);
        expect("payload after free", tm_set_payload(good, "x"), -EINVAL);
        tm_free_record(good);
        expect("opted in", tm_is_opted_in(), 1);

        free(huge);
        free(long_class);
        free(long_path);
        printf("%d failed\n", failures);
        return failures;
}
