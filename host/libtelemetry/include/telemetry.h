/*
 * telemetry.h: create telemetry records and hand them to telemd.
 *
 * The interface of libtelemetry.so.4 (SONAME libtelemetry.so.4), kept
 * source- and binary-compatible with the Clear Linux telemetrics-client
 * library that native probes were written against. Link with
 * `pkg-config --libs libtelemetry`. See telemetry(3) and the tm_*(3) pages.
 *
 * Every function that returns int returns 0 on success or a negative errno
 * value (-EINVAL, -ENOMEM, -ECONNREFUSED, ...); tm_is_opted_in returns 1
 * or 0. A record handle that was not made by tm_create_record, or was
 * already freed, is refused with -EINVAL, never dereferenced. The
 * functions may be called from several threads.
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */
#ifndef TELEMETRY_H
#define TELEMETRY_H

#include <stdint.h>
#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

struct telem_record;

/* The handle tm_create_record gives out; `record` is opaque. Free it with
 * tm_free_record only. */
struct telem_ref {
        struct telem_record *record;
};

/* Use c_file (an absolute path to a regular file) instead of the default
 * configuration for the socket path; records sent from now on carry it
 * (CFG:). It also names the opt-in file only if root or this process's
 * user owns it and no one else can write it. On error the file in effect
 * is unchanged.
 * Errors: -EINVAL (NULL, relative, not a regular file), -ENOENT and other
 * stat(2) errors, -ENAMETOOLONG. Since TM_1_0_0. */
int tm_set_config_file(const char *c_file);

/* Create a record in *t_ref with this machine's headers and a random
 * event id. severity is clamped to 1..4. classification is
 * DOMAIN/PROBE/REST: printable ASCII without spaces, at most 122 bytes,
 * each part 1..40 bytes. payload_version is the payload's own format
 * version (1: free text). On error *t_ref is NULL.
 * Errors: -EINVAL (NULL pointer, bad classification, unreadable config).
 * Since TM_3_0_0. */
int tm_create_record(struct telem_ref **t_ref, uint32_t severity,
                     char *classification, uint32_t payload_version);

/* Replace the record's event id with event_id: 32 characters of 0-9a-f.
 * Errors: -EINVAL. Since TM_4_0_0. */
int tm_set_event_id(struct telem_ref *t_ref, char *event_id);

/* Set the payload: printable ASCII and whitespace. Only the first 8192
 * bytes are taken. Errors: -EINVAL (NULL, other bytes). Since TM_3_0_0. */
int tm_set_payload(struct telem_ref *t_ref, char *payload);

/* Send the record to telemd over its socket; returns within about a
 * second whatever the daemon does. The record stays valid (it can be sent
 * again, and must still be freed).
 * Errors: -ECONNREFUSED (not opted in, or no daemon listening), -ENOENT
 * (no socket), -ETIMEDOUT, -EPIPE, -EINVAL. Since TM_3_0_0. */
int tm_send_record(struct telem_ref *t_ref);

/* 1 when telemetry is opted in on this machine, else 0. Since TM_4_1_0. */
int tm_is_opted_in(void);

/* Free a record. NULL, and a handle already freed, are ignored.
 * Since TM_2_0_0. */
void tm_free_record(struct telem_ref *t_ref);

#ifdef __cplusplus
}
#endif

#endif /* TELEMETRY_H */
