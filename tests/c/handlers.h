/* The C server's methods, shared by the in-process test and the standalone C server. */
#ifndef MERIDIAN_TEST_HANDLERS_H
#define MERIDIAN_TEST_HANDLERS_H

#include <stdio.h>
#include <string.h>
#include <time.h>

#include "meridian.h"

/* What `nested` tries to call from inside a handler (may be NULL). */
static meridian_client *volatile nested_target = NULL;

static inline void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* raw: answers the request bytes, with a trailer saying who answered. */
static inline uint32_t h_echo(void *user, const meridian_request *req, meridian_reply *reply) {
    (void)user;
    const uint8_t *data;
    size_t len;
    if (meridian_request_body(req, &data, &len) != MERIDIAN_OK) return MERIDIAN_INTERNAL;
    meridian_reply_set_trailer(reply, "handled-by", (const uint8_t *)"c", 1);
    return meridian_reply_set_body(reply, data, len);
}

/* JSON: [a, b] -> a + b. */
static inline uint32_t h_add(void *user, const meridian_request *req, meridian_reply *reply) {
    (void)user;
    const uint8_t *data;
    size_t len;
    long long a, b;
    char out[64];
    if (meridian_request_body(req, &data, &len) != MERIDIAN_OK) return MERIDIAN_INTERNAL;
    if (sscanf((const char *)data, " [ %lld , %lld ]", &a, &b) != 2) {
        meridian_reply_set_error_message(reply, "add takes [a, b]");
        return MERIDIAN_INVALID_ARGUMENT;
    }
    snprintf(out, sizeof out, "%lld", a + b);
    return meridian_reply_set_body(reply, (const uint8_t *)out, strlen(out));
}

/* raw: always fails with NOT_FOUND. */
static inline uint32_t h_fail(void *user, const meridian_request *req, meridian_reply *reply) {
    (void)user;
    (void)req;
    meridian_reply_set_error_message(reply, "no such thing");
    return MERIDIAN_NOT_FOUND;
}

/* raw: takes 600 ms unless cancelled. */
static inline uint32_t h_slow(void *user, const meridian_request *req, meridian_reply *reply) {
    (void)user;
    for (int i = 0; i < 60; i++) {
        bool cancelled = false;
        meridian_request_is_cancelled(req, &cancelled);
        if (cancelled) return MERIDIAN_CANCELLED;
        sleep_ms(10);
    }
    return meridian_reply_set_body(reply, (const uint8_t *)"late", 4);
}

/* raw streaming: request "N" -> messages "0" .. "N-1". */
static inline uint32_t h_count(void *user, const meridian_request *req, meridian_reply *reply) {
    (void)user;
    const uint8_t *data;
    size_t len;
    char msg[32];
    if (meridian_request_body(req, &data, &len) != MERIDIAN_OK) return MERIDIAN_INTERNAL;
    int n = atoi((const char *)data);
    for (int i = 0; i < n; i++) {
        snprintf(msg, sizeof msg, "%d", i);
        meridian_status st = meridian_reply_send(reply, (const uint8_t *)msg, strlen(msg));
        if (st != MERIDIAN_OK) return st;
    }
    return MERIDIAN_OK;
}

/* JSON streaming: request N -> {"i":0} .. {"i":N-1}. */
static inline uint32_t h_count_json(void *user, const meridian_request *req, meridian_reply *reply) {
    (void)user;
    const uint8_t *data;
    size_t len;
    char msg[32];
    if (meridian_request_body(req, &data, &len) != MERIDIAN_OK) return MERIDIAN_INTERNAL;
    int n = atoi((const char *)data);
    for (int i = 0; i < n; i++) {
        snprintf(msg, sizeof msg, "{\"i\":%d}", i);
        meridian_status st = meridian_reply_send(reply, (const uint8_t *)msg, strlen(msg));
        if (st != MERIDIAN_OK) return st;
    }
    return MERIDIAN_OK;
}

/* raw: makes a blocking call from inside the handler and answers the status's name. */
static inline uint32_t h_nested(void *user, const meridian_request *req, meridian_reply *reply) {
    (void)user;
    (void)req;
    meridian_response *resp = NULL;
    meridian_status st = meridian_client_unary(nested_target, "echo", MERIDIAN_PAYLOAD_RAW,
                                               (const uint8_t *)"x", 1, NULL, &resp);
    meridian_response_free(resp);
    const char *name = meridian_status_name(st);
    return meridian_reply_set_body(reply, (const uint8_t *)name, strlen(name));
}

/* JSON: answers text that is not JSON. */
static inline uint32_t h_bad_reply(void *user, const meridian_request *req, meridian_reply *reply) {
    (void)user;
    (void)req;
    return meridian_reply_set_body(reply, (const uint8_t *)"{oops", 5);
}

/* raw: answers the value of the request metadata "user", or fails. */
static inline uint32_t h_whoami(void *user, const meridian_request *req, meridian_reply *reply) {
    (void)user;
    const uint8_t *v;
    size_t n;
    uint64_t left = 0;
    if (meridian_request_metadata_get(req, "user", &v, &n) != MERIDIAN_OK) {
        meridian_reply_set_error_message(reply, "who are you?");
        return MERIDIAN_UNAUTHENTICATED;
    }
    if (meridian_request_remaining_ms(req, &left) != MERIDIAN_OK || left == 0) {
        meridian_reply_set_error_message(reply, "expected a deadline");
        return MERIDIAN_FAILED_PRECONDITION;
    }
    return meridian_reply_set_body(reply, v, n);
}

/* Registers every method above on `server`. */
static inline meridian_status register_handlers(meridian_server *s) {
    meridian_status st = MERIDIAN_OK;
#define ADD(kind, name, payload, fn)                                            \
    if (st == MERIDIAN_OK) st = meridian_server_add_##kind(s, name, payload, true, fn, NULL)
    ADD(unary, "echo", MERIDIAN_PAYLOAD_RAW, h_echo);
    ADD(unary, "add", MERIDIAN_PAYLOAD_JSON, h_add);
    ADD(unary, "fail", MERIDIAN_PAYLOAD_RAW, h_fail);
    ADD(unary, "slow", MERIDIAN_PAYLOAD_RAW, h_slow);
    ADD(unary, "nested", MERIDIAN_PAYLOAD_RAW, h_nested);
    ADD(unary, "bad_reply", MERIDIAN_PAYLOAD_JSON, h_bad_reply);
    ADD(unary, "whoami", MERIDIAN_PAYLOAD_RAW, h_whoami);
    ADD(server_streaming, "count", MERIDIAN_PAYLOAD_RAW, h_count);
    ADD(server_streaming, "count_json", MERIDIAN_PAYLOAD_JSON, h_count_json);
#undef ADD
    return st;
}

#endif
