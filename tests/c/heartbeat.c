/* A heartbeat probe, as native probes in the field are written: one
 * record, classification org.clearlinux/heartbeat/ping, sent through
 * libtelemetry. Usage: heartbeat [-f CONFIG] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <telemetry.h>

int main(int argc, char **argv)
{
        struct telem_ref *ref = NULL;
        int opt, rc;

        while ((opt = getopt(argc, argv, "f:")) != -1) {
                if (opt != 'f')
                        return 2;
                if (tm_set_config_file(optarg) != 0) {
                        fprintf(stderr, "heartbeat: bad config file %s\n", optarg);
                        return 2;
                }
        }
        rc = tm_create_record(&ref, 1, "org.clearlinux/heartbeat/ping", 1);
        if (rc < 0) {
                fprintf(stderr, "heartbeat: tm_create_record: %s\n", strerror(-rc));
                return 1;
        }
        rc = tm_set_payload(ref, "hello\n");
        if (rc == 0)
                rc = tm_send_record(ref);
        tm_free_record(ref);
        if (rc < 0) {
                fprintf(stderr, "heartbeat: %s\n", strerror(-rc));
                return 1;
        }
        puts("sent");
        return 0;
}
