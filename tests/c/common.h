/* Helpers shared by the C test programs. */
#ifndef MERIDIAN_TEST_COMMON_H
#define MERIDIAN_TEST_COMMON_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "meridian.h"

static int failures = 0;

static inline const char *last_error(void) {
    static char buf[512];
    size_t n = 0;
    if (meridian_last_error(buf, sizeof buf, &n) != MERIDIAN_OK) return "(no error text)";
    return buf;
}

/* Checks that `expr` returns `want`; prints the error text when it does not. */
#define EXPECT_STATUS(expr, want)                                                     \
    do {                                                                              \
        meridian_status got_ = (expr);                                                \
        if (got_ != (meridian_status)(want)) {                                        \
            fprintf(stderr, "FAIL %s:%d: %s -> %s (%s), want %s\n", __FILE__, __LINE__, \
                    #expr, meridian_status_name(got_), last_error(),                  \
                    meridian_status_name(want));                                      \
            failures++;                                                               \
        }                                                                             \
    } while (0)

#define EXPECT(cond)                                                                  \
    do {                                                                              \
        if (!(cond)) {                                                                \
            fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);           \
            failures++;                                                               \
        }                                                                             \
    } while (0)

/* Aborts the program when a set-up step fails. */
#define MUST(expr)                                                                    \
    do {                                                                              \
        meridian_status got_ = (expr);                                                \
        if (got_ != MERIDIAN_OK) {                                                    \
            fprintf(stderr, "FATAL %s:%d: %s -> %s (%s)\n", __FILE__, __LINE__, #expr, \
                    meridian_status_name(got_), last_error());                        \
            exit(2);                                                                  \
        }                                                                             \
    } while (0)

/* Makes a single-endpoint client of 127.0.0.1:port trusting the CA in ca_path. */
static inline meridian_client *connect_client(unsigned port, const char *ca_path) {
    meridian_client_config *cfg = NULL;
    meridian_client *client = NULL;
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%u", port);
    MUST(meridian_client_config_new(&cfg));
    MUST(meridian_client_config_add_endpoint(cfg, NULL, addr, "localhost"));
    MUST(meridian_client_config_set_roots_pem_file(cfg, ca_path));
    MUST(meridian_client_new(cfg, &client));
    meridian_client_config_free(cfg);
    return client;
}

/* A blocking unary call that expects success; returns the body as a malloc'd C string. */
static inline char *call_ok(meridian_client *client, const char *method, uint32_t payload,
                     const char *request, const meridian_call_options *options) {
    meridian_response *resp = NULL;
    const uint8_t *data = NULL;
    size_t len = 0;
    meridian_status st = meridian_client_unary(client, method, payload, (const uint8_t *)request,
                                               strlen(request), options, &resp);
    if (st != MERIDIAN_OK) {
        fprintf(stderr, "FAIL call %s(%s) -> %s: %s\n", method, request, meridian_status_name(st),
                last_error());
        failures++;
        return NULL;
    }
    MUST(meridian_response_body(resp, &data, &len));
    char *out = malloc(len + 1);
    memcpy(out, data, len);
    out[len] = 0;
    meridian_response_free(resp);
    return out;
}

#define EXPECT_BODY(call_expr, want)                                                  \
    do {                                                                              \
        char *body_ = (call_expr);                                                    \
        if (body_ == NULL || strcmp(body_, (want)) != 0) {                            \
            fprintf(stderr, "FAIL %s:%d: %s -> \"%s\", want \"%s\"\n", __FILE__, __LINE__, \
                    #call_expr, body_ ? body_ : "(null)", (want));                    \
            failures++;                                                               \
        }                                                                             \
        free(body_);                                                                  \
    } while (0)

#endif
