/* A Meridian client in C: `client PORT CA_PEM` calls the example server's `greet` (JSON)
 * and `upper` (raw bytes, asynchronously), and prints what came back. */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "meridian.h"

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t done_cv = PTHREAD_COND_INITIALIZER;
static int done = 0;

/* Runs on a library thread; owns `resp`. */
static void on_upper(void *user, meridian_status status, meridian_response *resp, const char *error) {
    const char *label = user;
    if (status == MERIDIAN_OK) {
        const uint8_t *data;
        size_t len;
        meridian_response_body(resp, &data, &len);
        printf("%s -> %.*s\n", label, (int)len, (const char *)data);
        meridian_response_free(resp);
    } else {
        printf("%s failed: %s: %s\n", label, meridian_status_name(status), error);
    }
    pthread_mutex_lock(&lock);
    done = 1;
    pthread_cond_signal(&done_cv);
    pthread_mutex_unlock(&lock);
}

static int fail(const char *what, meridian_status st) {
    char text[256];
    size_t n;
    meridian_last_error(text, sizeof text, &n);
    fprintf(stderr, "%s: %s: %s\n", what, meridian_status_name(st), text);
    return 1;
}

int main(int argc, char **argv) {
    char addr[64];
    meridian_client_config *cfg = NULL;
    meridian_client *client = NULL;
    meridian_call_options *opts = NULL;
    meridian_response *resp = NULL;
    meridian_status st;
    if (argc != 3) {
        fprintf(stderr, "usage: %s PORT CA_PEM\n", argv[0]);
        return 2;
    }
    snprintf(addr, sizeof addr, "127.0.0.1:%s", argv[1]);
    meridian_client_config_new(&cfg);
    meridian_client_config_add_endpoint(cfg, NULL, addr, "localhost");
    meridian_client_config_set_roots_pem_file(cfg, argv[2]);
    st = meridian_client_new(cfg, &client);
    meridian_client_config_free(cfg); /* the client keeps what it needs */
    if (st != MERIDIAN_OK) return fail("connect", st);

    meridian_call_options_new(&opts);
    meridian_call_options_set_timeout_ms(opts, 2000);
    const char *name = "\"Ada\"";
    st = meridian_client_unary(client, "greet", MERIDIAN_PAYLOAD_JSON, (const uint8_t *)name,
                               strlen(name), opts, &resp);
    if (st != MERIDIAN_OK) return fail("greet", st);
    const uint8_t *body;
    size_t len;
    uint64_t server_us = 0, total_us = 0;
    meridian_response_body(resp, &body, &len);
    meridian_response_total_time_us(resp, &total_us);
    if (meridian_response_server_time_us(resp, &server_us) != MERIDIAN_OK) server_us = 0;
    printf("greet(%s) -> %s  (%llu us in all, %llu us in the handler)\n", name, (const char *)body,
           (unsigned long long)total_us, (unsigned long long)server_us);
    meridian_response_free(resp);

    st = meridian_client_unary(client, "greet", MERIDIAN_PAYLOAD_JSON, (const uint8_t *)"42", 2,
                               opts, &resp);
    printf("greet(42) -> %s\n", meridian_status_name(st));

    st = meridian_client_unary_async(client, "upper", MERIDIAN_PAYLOAD_RAW,
                                     (const uint8_t *)"quiet please", 12, opts, on_upper,
                                     (void *)"upper(quiet please)");
    meridian_call_options_free(opts); /* copied by the call */
    if (st != MERIDIAN_OK) return fail("upper", st);
    pthread_mutex_lock(&lock);
    while (!done) pthread_cond_wait(&done_cv, &lock);
    pthread_mutex_unlock(&lock);
    meridian_client_free(client);
    return 0;
}
