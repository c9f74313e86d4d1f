/* Sends records through libtelemetry as the tests ask:
 *   send [-f CONFIG] [-c CLASS] [-s SEVERITY] [-v PAYLOAD_VERSION]
 *        [-e EVENT_ID] [-p PAYLOAD | -P PAYLOAD_FILE] [-n COUNT]
 * Prints "rc=N" for the first failing call (and exits 1), else "sent N". */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <telemetry.h>

static char *read_file(const char *path)
{
        FILE *f = fopen(path, "rb");
        char *buf;
        long n;

        if (!f)
                return NULL;
        fseek(f, 0, SEEK_END);
        n = ftell(f);
        rewind(f);
        buf = calloc(1, (size_t)n + 1);
        if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
                free(buf);
                buf = NULL;
        }
        fclose(f);
        return buf;
}

int main(int argc, char **argv)
{
        char *class = "org.example/native/test", *event_id = NULL;
        char *payload = "hello\n", *loaded = NULL;
        unsigned long severity = 1, version = 1, count = 1, i;
        int opt, rc;

        while ((opt = getopt(argc, argv, "f:c:s:v:e:p:P:n:")) != -1) {
                switch (opt) {
                case 'f':
                        rc = tm_set_config_file(optarg);
                        if (rc != 0) {
                                printf("rc=%d\n", rc);
                                return 1;
                        }
                        break;
                case 'c': class = optarg; break;
                case 's': severity = strtoul(optarg, NULL, 10); break;
                case 'v': version = strtoul(optarg, NULL, 10); break;
                case 'e': event_id = optarg; break;
                case 'p': payload = optarg; break;
                case 'P':
                        payload = loaded = read_file(optarg);
                        if (!payload)
                                return 2;
                        break;
                case 'n': count = strtoul(optarg, NULL, 10); break;
                default: return 2;
                }
        }
        for (i = 0; i < count; i++) {
                struct telem_ref *ref = NULL;

                rc = tm_create_record(&ref, (uint32_t)severity, class, (uint32_t)version);
                if (rc == 0 && event_id)
                        rc = tm_set_event_id(ref, event_id);
                if (rc == 0)
                        rc = tm_set_payload(ref, payload);
                if (rc == 0)
                        rc = tm_send_record(ref);
                tm_free_record(ref);
                if (rc != 0) {
                        printf("rc=%d\n", rc);
                        return 1;
                }
        }
        free(loaded);
        printf("sent %lu\n", count);
        return 0;
}
