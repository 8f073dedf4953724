/* C client -> C server in one process, over real QUIC on loopback, and every error path
 * of the interface. Exit status 0 when every check passed. */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <time.h>
#include <stdlib.h>
#include <unistd.h>

#include "common.h"
#include "handlers.h"

static char ca_path[256], cert_path[256], key_path[256];

/* An asynchronous call's result, handed from the library's thread to the test's. */
struct async_result {
    pthread_mutex_t lock;
    pthread_cond_t done_cv;
    int done;
    meridian_status status;
    char body[64];
    char error[128];
};

static void on_complete(void *user, meridian_status status, meridian_response *resp,
                        const char *error) {
    struct async_result *r = user;
    pthread_mutex_lock(&r->lock);
    r->status = status;
    if (resp != NULL) {
        const uint8_t *data;
        size_t len;
        if (meridian_response_body(resp, &data, &len) == MERIDIAN_OK && len < sizeof r->body) {
            memcpy(r->body, data, len);
            r->body[len] = 0;
        }
        meridian_response_free(resp);
    }
    if (error != NULL) snprintf(r->error, sizeof r->error, "%s", error);
    r->done = 1;
    pthread_cond_signal(&r->done_cv);
    pthread_mutex_unlock(&r->lock);
}

static void wait_result(struct async_result *r) {
    pthread_mutex_lock(&r->lock);
    while (!r->done) pthread_cond_wait(&r->done_cv, &r->lock);
    pthread_mutex_unlock(&r->lock);
}

static void test_null_and_invalid_arguments(void) {
    meridian_client_config *cfg = NULL;
    meridian_response *resp = NULL;
    const uint8_t *data = NULL;
    size_t len = 0;
    char buf[8];
    /* NULL out-pointers and handles are errors, never crashes. */
    EXPECT_STATUS(meridian_client_config_new(NULL), MERIDIAN_NULL_PARAMETER);
    EXPECT_STATUS(meridian_client_new(NULL, NULL), MERIDIAN_NULL_PARAMETER);
    EXPECT_STATUS(meridian_client_unary(NULL, "echo", 0, NULL, 0, NULL, &resp),
                  MERIDIAN_NULL_PARAMETER);
    EXPECT(resp == NULL);
    EXPECT_STATUS(meridian_response_body(NULL, &data, &len), MERIDIAN_NULL_PARAMETER);
    EXPECT_STATUS(meridian_stream_next(NULL, &data, &len), MERIDIAN_NULL_PARAMETER);
    EXPECT_STATUS(meridian_server_start(NULL, "127.0.0.1:0", "a", "b"), MERIDIAN_NULL_PARAMETER);
    EXPECT_STATUS(meridian_server_stop(NULL, 0), MERIDIAN_NULL_PARAMETER);
    EXPECT_STATUS(meridian_call_options_set_timeout_ms(NULL, 5), MERIDIAN_NULL_PARAMETER);
    EXPECT_STATUS(meridian_request_body(NULL, &data, &len), MERIDIAN_NULL_PARAMETER);
    EXPECT_STATUS(meridian_reply_send(NULL, NULL, 0), MERIDIAN_NULL_PARAMETER);
    EXPECT_STATUS(meridian_last_error(NULL, 0, &len), MERIDIAN_NULL_PARAMETER);
    /* The error text is truncated to the caller's buffer and NUL-terminated. */
    EXPECT_STATUS(meridian_client_new(NULL, NULL), MERIDIAN_NULL_PARAMETER);
    EXPECT_STATUS(meridian_last_error(buf, sizeof buf, &len), MERIDIAN_OK);
    EXPECT(len == sizeof buf - 1 && buf[len] == 0);
    /* free(NULL) is harmless. */
    meridian_client_free(NULL);
    meridian_client_config_free(NULL);
    meridian_call_options_free(NULL);
    meridian_response_free(NULL);
    meridian_stream_free(NULL);
    meridian_server_free(NULL);
    /* Bad configurations. */
    MUST(meridian_client_config_new(&cfg));
    EXPECT_STATUS(meridian_client_config_add_endpoint(cfg, NULL, "not an address", NULL),
                  MERIDIAN_INVALID_PARAMETER);
    EXPECT_STATUS(meridian_client_config_add_endpoint(cfg, NULL, NULL, NULL),
                  MERIDIAN_NULL_PARAMETER);
    meridian_client *client = NULL;
    EXPECT_STATUS(meridian_client_new(cfg, &client), MERIDIAN_CONFIG_ERROR); /* no trust */
    MUST(meridian_client_config_set_roots_pem_file(cfg, "/nonexistent/ca.pem"));
    MUST(meridian_client_config_add_endpoint(cfg, NULL, "127.0.0.1:9", NULL));
    EXPECT_STATUS(meridian_client_new(cfg, &client), MERIDIAN_CONFIG_ERROR); /* unreadable */
    EXPECT_STATUS(meridian_client_config_set_pinned_certificate(cfg, (const uint8_t *)"", 0),
                  MERIDIAN_CONFIG_ERROR);
    EXPECT(client == NULL);
    meridian_client_config_free(cfg);
    EXPECT(meridian_status_grpc_code(MERIDIAN_DEADLINE_EXCEEDED) == 4);
    EXPECT(strcmp(meridian_status_name(12345), "UNRECOGNIZED") == 0);
}

static void test_calls(meridian_client *client) {
    meridian_call_options *opts = NULL;
    meridian_response *resp = NULL;
    const uint8_t *data;
    size_t len;
    uint64_t us = 0;

    /* Raw bytes, trailers, per-hop timing. */
    MUST(meridian_client_unary(client, "echo", MERIDIAN_PAYLOAD_RAW, (const uint8_t *)"hi\0there",
                               8, NULL, &resp));
    MUST(meridian_response_body(resp, &data, &len));
    EXPECT(len == 8 && memcmp(data, "hi\0there", 8) == 0);
    MUST(meridian_response_metadata_get(resp, "handled-by", &data, &len));
    EXPECT(len == 1 && data[0] == 'c');
    EXPECT_STATUS(meridian_response_metadata_get(resp, "absent", &data, &len),
                  MERIDIAN_NOT_PRESENT);
    EXPECT_STATUS(meridian_response_server_time_us(resp, &us), MERIDIAN_OK);
    uint64_t total = 0;
    MUST(meridian_response_total_time_us(resp, &total));
    EXPECT(total >= us && total > 0);
    meridian_response_free(resp);

    /* JSON in and out; empty raw body. */
    EXPECT_BODY(call_ok(client, "add", MERIDIAN_PAYLOAD_JSON, "[10, 5]", NULL), "15");
    EXPECT_BODY(call_ok(client, "echo", MERIDIAN_PAYLOAD_RAW, "", NULL), "");

    /* Metadata and deadline reach the handler. */
    MUST(meridian_call_options_new(&opts));
    MUST(meridian_call_options_add_metadata(opts, "user", (const uint8_t *)"ada", 3));
    MUST(meridian_call_options_set_timeout_ms(opts, 5000));
    EXPECT_BODY(call_ok(client, "whoami", MERIDIAN_PAYLOAD_RAW, "", opts), "ada");
    meridian_call_options_free(opts);

    /* Error statuses carry the server's message; nothing is written on failure. */
    resp = NULL;
    EXPECT_STATUS(meridian_client_unary(client, "whoami", 0, NULL, 0, NULL, &resp),
                  MERIDIAN_UNAUTHENTICATED);
    EXPECT(strstr(last_error(), "who are you?") != NULL);
    EXPECT_STATUS(meridian_client_unary(client, "fail", 0, NULL, 0, NULL, &resp),
                  MERIDIAN_NOT_FOUND);
    EXPECT(strstr(last_error(), "no such thing") != NULL);
    EXPECT_STATUS(meridian_client_unary(client, "no_such_method", 0, NULL, 0, NULL, &resp),
                  MERIDIAN_UNIMPLEMENTED);
    EXPECT_STATUS(meridian_client_unary(client, "add", MERIDIAN_PAYLOAD_JSON,
                                        (const uint8_t *)"[1, 2", 5, NULL, &resp),
                  MERIDIAN_BAD_JSON);
    EXPECT_STATUS(meridian_client_unary(client, "add", MERIDIAN_PAYLOAD_JSON,
                                        (const uint8_t *)"{\"a\": 1}", 8, NULL, &resp),
                  MERIDIAN_INVALID_ARGUMENT);
    EXPECT_STATUS(meridian_client_unary(client, "bad_reply", MERIDIAN_PAYLOAD_JSON,
                                        (const uint8_t *)"null", 4, NULL, &resp),
                  MERIDIAN_INTERNAL);
    EXPECT_STATUS(meridian_client_unary(client, "echo", 42, NULL, 0, NULL, &resp),
                  MERIDIAN_INVALID_PARAMETER);
    EXPECT_STATUS(meridian_client_unary(client, "", 0, NULL, 0, NULL, &resp),
                  MERIDIAN_INVALID_PARAMETER);
    EXPECT_STATUS(meridian_client_unary(client, "echo", 0, NULL, 3, NULL, &resp),
                  MERIDIAN_NULL_PARAMETER);
    EXPECT(resp == NULL);

    /* Deadline. */
    MUST(meridian_call_options_new(&opts));
    MUST(meridian_call_options_set_timeout_ms(opts, 100));
    EXPECT_STATUS(meridian_client_unary(client, "slow", 0, NULL, 0, opts, &resp),
                  MERIDIAN_DEADLINE_EXCEEDED);
    meridian_call_options_free(opts);
    EXPECT(resp == NULL);

    /* A blocking call inside a handler is refused, not a deadlock. */
    nested_target = client;
    EXPECT_BODY(call_ok(client, "nested", MERIDIAN_PAYLOAD_RAW, "", NULL), "WOULD_DEADLOCK");
}

static void test_async(meridian_client *client) {
    struct async_result ok = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, "", ""};
    struct async_result bad = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, "", ""};
    MUST(meridian_client_unary_async(client, "add", MERIDIAN_PAYLOAD_JSON,
                                     (const uint8_t *)"[40, 2]", 7, NULL, on_complete, &ok));
    MUST(meridian_client_unary_async(client, "fail", MERIDIAN_PAYLOAD_RAW, NULL, 0, NULL,
                                     on_complete, &bad));
    wait_result(&ok);
    wait_result(&bad);
    EXPECT(ok.status == MERIDIAN_OK && strcmp(ok.body, "42") == 0);
    EXPECT(bad.status == MERIDIAN_NOT_FOUND && strstr(bad.error, "no such thing") != NULL);
    EXPECT_STATUS(meridian_client_unary_async(client, "add", 0, NULL, 0, NULL, NULL, NULL),
                  MERIDIAN_NULL_PARAMETER);
}

static void test_streaming(meridian_client *client) {
    meridian_stream *stream = NULL;
    const uint8_t *data;
    size_t len;
    char want[16];
    MUST(meridian_client_server_streaming(client, "count", MERIDIAN_PAYLOAD_RAW,
                                          (const uint8_t *)"5", 1, NULL, &stream));
    for (int i = 0; i < 5; i++) {
        snprintf(want, sizeof want, "%d", i);
        EXPECT_STATUS(meridian_stream_next(stream, &data, &len), MERIDIAN_OK);
        EXPECT(len == strlen(want) && memcmp(data, want, len) == 0);
    }
    EXPECT_STATUS(meridian_stream_next(stream, &data, &len), MERIDIAN_STREAM_END);
    EXPECT_STATUS(meridian_stream_next(stream, &data, &len), MERIDIAN_STREAM_END);
    meridian_stream_free(stream);

    MUST(meridian_client_server_streaming(client, "count_json", MERIDIAN_PAYLOAD_JSON,
                                          (const uint8_t *)"3", 1, NULL, &stream));
    EXPECT_STATUS(meridian_stream_next(stream, &data, &len), MERIDIAN_OK);
    EXPECT(strcmp((const char *)data, "{\"i\":0}") == 0);
    meridian_stream_free(stream); /* cancels the rest */

    /* A stream that fails: unknown method. */
    stream = NULL;
    meridian_status st = meridian_client_server_streaming(client, "nope", 0, NULL, 0, NULL, &stream);
    if (st == MERIDIAN_OK) {
        EXPECT_STATUS(meridian_stream_next(stream, &data, &len), MERIDIAN_UNIMPLEMENTED);
        meridian_stream_free(stream);
    } else {
        EXPECT(st == MERIDIAN_UNIMPLEMENTED);
    }
}

static void *concurrent_caller(void *arg) {
    meridian_client *client = arg;
    for (int i = 0; i < 20; i++) {
        char req[32], want[32];
        snprintf(req, sizeof req, "[%d, %d]", i, 1000);
        snprintf(want, sizeof want, "%d", i + 1000);
        EXPECT_BODY(call_ok(client, "add", MERIDIAN_PAYLOAD_JSON, req, NULL), want);
    }
    return NULL;
}

/* A region client: two single-server regions, the preferred one used, raw and JSON calls
   routed, a streaming call routed. */
static void test_region_client(void) {
    meridian_server *a = NULL, *b = NULL;
    uint16_t pa = 0, pb = 0;
    MUST(meridian_server_new("r-a", &a));
    MUST(meridian_server_new("r-b", &b));
    MUST(register_handlers(a));
    MUST(register_handlers(b));
    MUST(meridian_server_start(a, "127.0.0.1:0", cert_path, key_path));
    MUST(meridian_server_start(b, "127.0.0.1:0", cert_path, key_path));
    MUST(meridian_server_port(a, &pa));
    MUST(meridian_server_port(b, &pb));

    char addr_a[32], addr_b[32];
    snprintf(addr_a, sizeof addr_a, "127.0.0.1:%u", (unsigned)pa);
    snprintf(addr_b, sizeof addr_b, "127.0.0.1:%u", (unsigned)pb);
    meridian_client_config *cfg = NULL;
    meridian_client *rc = NULL;
    MUST(meridian_client_config_new(&cfg));
    MUST(meridian_client_config_add_endpoint(cfg, "r-a", addr_a, "localhost"));
    MUST(meridian_client_config_add_endpoint(cfg, "r-b", addr_b, "localhost"));
    MUST(meridian_client_config_set_roots_pem_file(cfg, ca_path));
    MUST(meridian_client_config_set_preferred_region(cfg, "r-b"));
    MUST(meridian_client_new(cfg, &rc));
    meridian_client_config_free(cfg);
    MUST(meridian_client_wait_ready(rc, "echo", 5000));

    EXPECT_BODY(call_ok(rc, "add", MERIDIAN_PAYLOAD_JSON, "[2, 3]", NULL), "5");
    meridian_response *resp = NULL;
    const uint8_t *data;
    size_t len;
    MUST(meridian_client_unary(rc, "echo", MERIDIAN_PAYLOAD_RAW, (const uint8_t *)"via region",
                               10, NULL, &resp));
    MUST(meridian_response_body(resp, &data, &len));
    EXPECT(len == 10 && memcmp(data, "via region", 10) == 0);
    meridian_response_free(resp);

    /* With the preferred region gone, calls go to the other one. */
    MUST(meridian_server_stop(b, 500));
    meridian_call_options *opts = NULL;
    MUST(meridian_call_options_new(&opts));
    MUST(meridian_call_options_set_timeout_ms(opts, 8000));
    MUST(meridian_call_options_set_idempotent(opts, true));
    EXPECT_BODY(call_ok(rc, "add", MERIDIAN_PAYLOAD_JSON, "[20, 22]", opts), "42");
    meridian_call_options_free(opts);

    meridian_client_free(rc);
    MUST(meridian_server_stop(a, 500));
    meridian_server_free(a);
    meridian_server_free(b);
}

int main(void) {
    char dir[] = "/tmp/meridian-c-test-XXXXXX";
    if (mkdtemp(dir) == NULL) return 2;
    MUST(meridian_dev_certificates_write(dir));
    snprintf(ca_path, sizeof ca_path, "%s/ca.pem", dir);
    snprintf(cert_path, sizeof cert_path, "%s/server.pem", dir);
    snprintf(key_path, sizeof key_path, "%s/server.key", dir);

    test_null_and_invalid_arguments();
    test_region_client();

    meridian_server *server = NULL;
    uint16_t port = 0;
    MUST(meridian_server_new("local", &server));
    EXPECT_STATUS(meridian_server_port(server, &port), MERIDIAN_INVALID_STATE);
    MUST(register_handlers(server));
    EXPECT_STATUS(meridian_server_start(server, "127.0.0.1:0", "/nonexistent", key_path),
                  MERIDIAN_CONFIG_ERROR);
    MUST(meridian_server_start(server, "127.0.0.1:0", cert_path, key_path));
    EXPECT_STATUS(meridian_server_add_unary(server, "late", 0, false, h_echo, NULL),
                  MERIDIAN_INVALID_STATE);
    MUST(meridian_server_port(server, &port));

    meridian_client *client = connect_client(port, ca_path);
    test_calls(client);
    test_async(client);
    test_streaming(client);

    pthread_t threads[4];
    for (int i = 0; i < 4; i++) pthread_create(&threads[i], NULL, concurrent_caller, client);
    for (int i = 0; i < 4; i++) pthread_join(threads[i], NULL);

    /* Server gone: stop it, then call. Without a deadline the calls fail fast with
       UNAVAILABLE (they used to wait 10 s to minutes through reconnection attempts). */
    MUST(meridian_server_stop(server, 1000));
    meridian_call_options *opts = NULL;
    meridian_response *resp = NULL;
    MUST(meridian_call_options_new(&opts));
    for (int i = 0; i < 3; i++) {
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        meridian_status st =
            meridian_client_unary(client, "echo", 0, (const uint8_t *)"x", 1, opts, &resp);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double took = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
        EXPECT_STATUS(st, MERIDIAN_UNAVAILABLE);
        EXPECT(took < 3.0);
        EXPECT(resp == NULL);
    }
    /* Waiting for ready: the call waits, up to its deadline. */
    MUST(meridian_call_options_set_wait_for_ready(opts, true));
    MUST(meridian_call_options_set_timeout_ms(opts, 500));
    EXPECT_STATUS(meridian_client_unary(client, "echo", 0, (const uint8_t *)"x", 1, opts, &resp),
                  MERIDIAN_DEADLINE_EXCEEDED);
    EXPECT_STATUS(meridian_call_options_set_wait_for_ready(NULL, true), MERIDIAN_NULL_PARAMETER);
    meridian_call_options_free(opts);
    meridian_client_free(client);
    meridian_server_free(server);

    /* Connecting to nothing fails cleanly. */
    meridian_client_config *cfg = NULL;
    meridian_client *none = NULL;
    char addr[32];
    snprintf(addr, sizeof addr, "127.0.0.1:%u", (unsigned)port);
    MUST(meridian_client_config_new(&cfg));
    MUST(meridian_client_config_add_endpoint(cfg, NULL, addr, NULL));
    MUST(meridian_client_config_set_roots_pem_file(cfg, ca_path));
    MUST(meridian_client_config_set_connect_timeout_ms(cfg, 500));
    EXPECT_STATUS(meridian_client_new(cfg, &none), MERIDIAN_UNAVAILABLE);
    EXPECT(none == NULL);
    meridian_client_config_free(cfg);

    unlink(ca_path);
    unlink(cert_path);
    unlink(key_path);
    rmdir(dir);
    if (failures) {
        fprintf(stderr, "test_ffi: %d check(s) failed\n", failures);
        return 1;
    }
    printf("test_ffi: all checks passed\n");
    return 0;
}
