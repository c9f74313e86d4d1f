/* Records made in forked children are told apart: each child's event id
 * is its own, even when the parent used the library before forking.
 * Usage: forked CONFIG CHILDREN */
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
#include <telemetry.h>

static int send_one(const char *class)
{
        struct telem_ref *ref = NULL;
        int rc = tm_create_record(&ref, 1, (char *)class, 1);

        if (rc == 0)
                rc = tm_set_payload(ref, "forked\n");
        if (rc == 0)
                rc = tm_send_record(ref);
        tm_free_record(ref);
        return rc;
}

int main(int argc, char **argv)
{
        int children, i, failed = 0;

        if (argc != 3 || tm_set_config_file(argv[1]) != 0)
                return 100;
        children = atoi(argv[2]);
        /* The parent makes a record first: whatever state the library keeps
         * is set up before the children are forked from it. */
        if (send_one("org.example/forked/parent") != 0)
                return 1;
        for (i = 0; i < children; i++) {
                pid_t pid = fork();

                if (pid < 0)
                        return 2;
                if (pid == 0)
                        _exit(send_one("org.example/forked/child") != 0);
        }
        for (i = 0; i < children; i++) {
                int status;

                if (wait(&status) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
                        failed++;
        }
        printf("%d failed\n", failed);
        return failed != 0;
}
