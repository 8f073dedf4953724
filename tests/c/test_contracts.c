/* The header's promises that the bindings review (2026-11-29, section 3.2) found broken,
 * one check each, over real QUIC on loopback (C client -> C server in one process):
 * pinned certificates are parsed when set, JSON integers are signed 64-bit and nesting is
 * at most 64 deep (both refused locally), a JSON handler without a body answers null, a
 * unary call to a streaming method says so, an unknown preferred region is a config
 * error, metadata keys follow gRPC's rules, registering on a running server says why,
 * the message size limit is settable on both sides, and a server's error text is cut at
 * 8 KiB. Exit status 0 when every check passed. */
#define _POSIX_C_SOURCE 200809L
#include <stdlib.h>
#include <unistd.h>

#include "common.h"
#include "handlers.h"

static char ca_path[256], cert_path[256], key_path[256];

/* JSON: answers the request unchanged. */
static uint32_t h_json_echo(void *user, const meridian_request *req, meridian_reply *reply) {
    (void)user;
    const uint8_t *data;
    size_t len;
    if (meridian_request_body(req, &data, &len) != MERIDIAN_OK) return MERIDIAN_INTERNAL;
    return meridian_reply_set_body(reply, data, len);
}

/* JSON: returns OK without setting a body. */
static uint32_t h_no_body(void *user, const meridian_request *req, meridian_reply *reply) {
    (void)user;
    (void)req;
    (void)reply;
    return MERIDIAN_OK;
}

/* raw: tries trailer keys, answers the status names of the attempts. */
static uint32_t h_trailer_keys(void *user, const meridian_request *req, meridian_reply *reply) {
    (void)user;
    (void)req;
    char out[128];
    meridian_status a = meridian_reply_set_trailer(reply, "Bad Key", (const uint8_t *)"v", 1);
    meridian_status b = meridian_reply_set_trailer(reply, "", (const uint8_t *)"v", 1);
    meridian_status c = meridian_reply_set_trailer(reply, "good-key", (const uint8_t *)"v", 1);
    snprintf(out, sizeof out, "%s %s %s", meridian_status_name(a), meridian_status_name(b),
             meridian_status_name(c));
    return meridian_reply_set_body(reply, (const uint8_t *)out, strlen(out));
}

/* raw: fails with a 100 KiB error message. */
static uint32_t h_long_error(void *user, const meridian_request *req, meridian_reply *reply) {
    (void)user;
    (void)req;
    size_t n = 100 * 1024;
    char *text = malloc(n + 1);
    memset(text, 'e', n);
    text[n] = 0;
    meridian_reply_set_error_message(reply, text);
    free(text);
    return MERIDIAN_ABORTED;
}

static meridian_server *start_server(uint16_t *port, size_t max_message) {
    meridian_server *s = NULL;
    MUST(meridian_server_new("contracts", &s));
    MUST(register_handlers(s));
    MUST(meridian_server_add_unary(s, "json_echo", MERIDIAN_PAYLOAD_JSON, true, h_json_echo, NULL));
    MUST(meridian_server_add_unary(s, "no_body", MERIDIAN_PAYLOAD_JSON, true, h_no_body, NULL));
    MUST(meridian_server_add_unary(s, "trailer_keys", 0, true, h_trailer_keys, NULL));
    MUST(meridian_server_add_unary(s, "long_error", 0, true, h_long_error, NULL));
    if (max_message) MUST(meridian_server_set_max_message_bytes(s, max_message));
    MUST(meridian_server_start(s, "127.0.0.1:0", cert_path, key_path));
    MUST(meridian_server_port(s, port));
    return s;
}

static meridian_client *client_with_limit(uint16_t port, size_t max_message) {
    meridian_client_config *cfg = NULL;
    meridian_client *c = NULL;
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%u", (unsigned)port);
    MUST(meridian_client_config_new(&cfg));
    MUST(meridian_client_config_add_endpoint(cfg, NULL, addr, "localhost"));
    MUST(meridian_client_config_set_roots_pem_file(cfg, ca_path));
    MUST(meridian_client_config_set_max_message_bytes(cfg, max_message));
    MUST(meridian_client_new(cfg, &c));
    meridian_client_config_free(cfg);
    return c;
}

static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) return NULL;
    char *buf = malloc(1 << 16);
    *len = fread(buf, 1, 1 << 16, f);
    fclose(f);
    return buf;
}

/* A pinned certificate is parsed when set: garbage is a CONFIG_ERROR there, and the
   trust set before stays; a real certificate (PEM) is accepted and connects. */
static void test_pinned_certificate(uint16_t port) {
    meridian_client_config *cfg = NULL;
    meridian_client *c = NULL;
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%u", (unsigned)port);
    MUST(meridian_client_config_new(&cfg));
    MUST(meridian_client_config_add_endpoint(cfg, NULL, addr, "localhost"));
    EXPECT_STATUS(meridian_client_config_set_pinned_certificate(cfg, (const uint8_t *)"garbage", 7),
                  MERIDIAN_CONFIG_ERROR);
    EXPECT(strstr(last_error(), "X.509") != NULL);
    static const uint8_t not_a_cert[] = {0x30, 0x03, 0x02, 0x01, 0x05}; /* DER, not X.509 */
    EXPECT_STATUS(meridian_client_config_set_pinned_certificate(cfg, not_a_cert, sizeof not_a_cert),
                  MERIDIAN_CONFIG_ERROR);
    /* Nothing was set: still no trust. */
    EXPECT_STATUS(meridian_client_new(cfg, &c), MERIDIAN_CONFIG_ERROR);
    EXPECT(strstr(last_error(), "no TLS trust") != NULL);
    size_t len = 0;
    char *pem = read_file(cert_path, &len);
    EXPECT(pem != NULL && len > 0);
    EXPECT_STATUS(meridian_client_config_set_pinned_certificate(cfg, (const uint8_t *)pem, len),
                  MERIDIAN_OK);
    free(pem);
    EXPECT_STATUS(meridian_client_new(cfg, &c), MERIDIAN_OK);
    if (c) EXPECT_BODY(call_ok(c, "echo", 0, "pinned", NULL), "pinned");
    meridian_client_free(c);
    meridian_client_config_free(cfg);
}

/* JSON integers are signed 64-bit: the extremes pass, one past them is BAD_JSON before
   sending (it used to become the float 1e+23). */
static void test_json_integers(meridian_client *c) {
    meridian_response *resp = NULL;
    EXPECT_BODY(call_ok(c, "json_echo", MERIDIAN_PAYLOAD_JSON,
                        "[-9223372036854775808,9223372036854775807]", NULL),
                "[-9223372036854775808,9223372036854775807]");
    const char *wide[] = {"[99999999999999999999999]", "18446744073709551615",
                          "{\"a\":-9223372036854775809}"};
    for (int i = 0; i < 3; i++) {
        EXPECT_STATUS(meridian_client_unary(c, "json_echo", MERIDIAN_PAYLOAD_JSON,
                                            (const uint8_t *)wide[i], strlen(wide[i]), NULL, &resp),
                      MERIDIAN_BAD_JSON);
        EXPECT(strstr(last_error(), "signed 64-bit") != NULL);
    }
    EXPECT(resp == NULL);
    /* Large numbers that are floats stay floats. */
    EXPECT_BODY(call_ok(c, "json_echo", MERIDIAN_PAYLOAD_JSON, "[1e+23]", NULL), "[1e+23]");
}

/* Nesting: 64 levels go through; 65 are refused locally with the limit named. */
static void test_json_depth(meridian_client *c) {
    char text[2 * 65 + 1];
    meridian_response *resp = NULL;
    for (int depth = 64; depth <= 65; depth++) {
        for (int i = 0; i < depth; i++) text[i] = '[';
        for (int i = 0; i < depth; i++) text[depth + i] = ']';
        text[2 * depth] = 0;
        if (depth == 64) {
            EXPECT_BODY(call_ok(c, "json_echo", MERIDIAN_PAYLOAD_JSON, text, NULL), text);
        } else {
            EXPECT_STATUS(meridian_client_unary(c, "json_echo", MERIDIAN_PAYLOAD_JSON,
                                                (const uint8_t *)text, strlen(text), NULL, &resp),
                          MERIDIAN_BAD_JSON);
            EXPECT(strstr(last_error(), "maximum depth of 64") != NULL);
        }
    }
}

/* A JSON handler that sets no body answers null. */
static void test_json_no_body(meridian_client *c) {
    EXPECT_BODY(call_ok(c, "no_body", MERIDIAN_PAYLOAD_JSON, "{}", NULL), "null");
}

/* A unary call to a server-streaming method is FAILED_PRECONDITION naming the kind. */
static void test_unary_to_streaming(meridian_client *c) {
    meridian_response *resp = NULL;
    EXPECT_STATUS(meridian_client_unary(c, "count", MERIDIAN_PAYLOAD_RAW, (const uint8_t *)"3", 1,
                                        NULL, &resp),
                  MERIDIAN_FAILED_PRECONDITION);
    EXPECT(strstr(last_error(), "server-streaming") != NULL);
    EXPECT(resp == NULL);
    /* The client still works afterwards. */
    EXPECT_BODY(call_ok(c, "echo", 0, "still", NULL), "still");
}

/* An unknown preferred region is a CONFIG_ERROR at client creation. */
static void test_unknown_region(uint16_t port) {
    meridian_client_config *cfg = NULL;
    meridian_client *c = NULL;
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%u", (unsigned)port);
    MUST(meridian_client_config_new(&cfg));
    MUST(meridian_client_config_add_endpoint(cfg, "eu", addr, "localhost"));
    MUST(meridian_client_config_add_endpoint(cfg, "us", addr, "localhost"));
    MUST(meridian_client_config_set_roots_pem_file(cfg, ca_path));
    MUST(meridian_client_config_set_preferred_region(cfg, "mars"));
    EXPECT_STATUS(meridian_client_new(cfg, &c), MERIDIAN_CONFIG_ERROR);
    EXPECT(strstr(last_error(), "\"mars\"") != NULL && strstr(last_error(), "eu, us") != NULL);
    EXPECT(c == NULL);
    MUST(meridian_client_config_set_preferred_region(cfg, "us"));
    EXPECT_STATUS(meridian_client_new(cfg, &c), MERIDIAN_OK);
    meridian_client_free(c);
    meridian_client_config_free(cfg);
}

/* Metadata and trailer keys: empty or not lowercase ASCII is INVALID_PARAMETER. */
static void test_metadata_keys(meridian_client *c) {
    meridian_call_options *o = NULL;
    MUST(meridian_call_options_new(&o));
    const char *bad[] = {"", "Upper", "with space", "caf\xc3\xa9", "a:b"};
    for (int i = 0; i < 5; i++) {
        EXPECT_STATUS(meridian_call_options_add_metadata(o, bad[i], (const uint8_t *)"v", 1),
                      MERIDIAN_INVALID_PARAMETER);
    }
    EXPECT_STATUS(meridian_call_options_add_metadata(o, "user", (const uint8_t *)"ada", 3),
                  MERIDIAN_OK);
    EXPECT_STATUS(meridian_call_options_add_metadata(o, "x-trace_id.2", (const uint8_t *)"1", 1),
                  MERIDIAN_OK);
    MUST(meridian_call_options_set_timeout_ms(o, 5000));
    EXPECT_BODY(call_ok(c, "whoami", 0, "", o), "ada");
    meridian_call_options_free(o);
    EXPECT_BODY(call_ok(c, "trailer_keys", 0, "", NULL), "INVALID_PARAMETER INVALID_PARAMETER OK");
}

/* Registering on a running server says it is running; after a stop it is allowed and the
   next start serves the new method. */
static void test_register_after_stop(void) {
    uint16_t port = 0;
    meridian_server *s = start_server(&port, 0);
    EXPECT_STATUS(meridian_server_add_unary(s, "late", 0, false, h_echo, NULL),
                  MERIDIAN_INVALID_STATE);
    EXPECT(strstr(last_error(), "running") != NULL);
    MUST(meridian_server_stop(s, 100));
    EXPECT_STATUS(meridian_server_add_unary(s, "late", 0, false, h_echo, NULL), MERIDIAN_OK);
    MUST(meridian_server_start(s, "127.0.0.1:0", cert_path, key_path));
    MUST(meridian_server_port(s, &port));
    meridian_client *c = connect_client(port, ca_path);
    EXPECT_BODY(call_ok(c, "late", 0, "served", NULL), "served");
    meridian_client_free(c);
    meridian_server_free(s);
}

static meridian_status echo_size(meridian_client *c, size_t n) {
    uint8_t *buf = malloc(n);
    memset(buf, 'm', n);
    meridian_response *resp = NULL;
    meridian_status st = meridian_client_unary(c, "echo", 0, buf, n, NULL, &resp);
    if (st == MERIDIAN_OK) {
        const uint8_t *data;
        size_t len = 0;
        MUST(meridian_response_body(resp, &data, &len));
        if (len != n || memcmp(data, buf, n) != 0) st = MERIDIAN_DATA_LOSS;
    }
    meridian_response_free(resp);
    free(buf);
    return st;
}

/* The message size limit: 4 MiB by default on both sides; settable on both. */
static void test_message_size(uint16_t default_port) {
    const size_t mib = 1024 * 1024;
    meridian_client *c = client_with_limit(default_port, 0);
    EXPECT_STATUS(echo_size(c, 4 * mib), MERIDIAN_OK);
    EXPECT_STATUS(echo_size(c, 5 * mib), MERIDIAN_RESOURCE_EXHAUSTED);
    EXPECT(strstr(last_error(), "4194304") != NULL);
    meridian_client_free(c);

    /* Raised on both sides: 6 MiB goes through; the default server still refuses it. */
    uint16_t port = 0;
    meridian_server *big = start_server(&port, 8 * mib);
    EXPECT_STATUS(meridian_server_set_max_message_bytes(big, mib), MERIDIAN_INVALID_STATE);
    c = client_with_limit(port, 8 * mib);
    if (getenv("MERIDIAN_TEST_UNDER_VALGRIND") == NULL) {
        EXPECT_STATUS(echo_size(c, 6 * mib), MERIDIAN_OK);
    } else {
        /* Under valgrind, with the debug library, a 6 MiB echo took 51-57 s, the request
           about half of it: close to the server's 30 s request timeout, and in one CI run
           past it (DEADLINE_EXCEEDED). The native and sanitizer runs send 6 MiB; here the
           raised-limit client and server only echo 3 MiB, which the default allows too. */
        EXPECT_STATUS(echo_size(c, 3 * mib), MERIDIAN_OK);
    }
    meridian_client_free(c);
    c = client_with_limit(default_port, 8 * mib);
    EXPECT_STATUS(echo_size(c, 6 * mib), MERIDIAN_RESOURCE_EXHAUSTED);
    meridian_client_free(c);

    /* Lowered on the client: a 2 MiB request fails locally. */
    c = client_with_limit(port, 1 * mib);
    EXPECT_STATUS(echo_size(c, mib), MERIDIAN_OK);
    EXPECT_STATUS(echo_size(c, 2 * mib), MERIDIAN_RESOURCE_EXHAUSTED);
    EXPECT(strstr(last_error(), "1048576") != NULL);
    meridian_client_free(c);
    meridian_server_free(big);

    meridian_client_config *cfg = NULL;
    MUST(meridian_client_config_new(&cfg));
    EXPECT_STATUS(meridian_client_config_set_max_message_bytes(cfg, (size_t)2 << 30),
                  MERIDIAN_INVALID_PARAMETER);
    EXPECT_STATUS(meridian_client_config_set_max_message_bytes(NULL, 1), MERIDIAN_NULL_PARAMETER);
    meridian_client_config_free(cfg);
}

/* A server's error text reaches the caller cut at 8 KiB. */
static void test_error_text_cap(meridian_client *c) {
    meridian_response *resp = NULL;
    EXPECT_STATUS(meridian_client_unary(c, "long_error", 0, NULL, 0, NULL, &resp),
                  MERIDIAN_ABORTED);
    static char text[64 * 1024];
    size_t n = 0;
    MUST(meridian_last_error(text, sizeof text, &n));
    EXPECT(n == 8192);
    EXPECT(text[0] == 'e' && text[8191] == 'e');
}

int main(void) {
    char dir[] = "/tmp/meridian-c-contracts-XXXXXX";
    if (mkdtemp(dir) == NULL) return 2;
    MUST(meridian_dev_certificates_write(dir));
    snprintf(ca_path, sizeof ca_path, "%s/ca.pem", dir);
    snprintf(cert_path, sizeof cert_path, "%s/server.pem", dir);
    snprintf(key_path, sizeof key_path, "%s/server.key", dir);

    uint16_t port = 0;
    meridian_server *server = start_server(&port, 0);
    meridian_client *client = connect_client(port, ca_path);

    test_pinned_certificate(port);
    test_json_integers(client);
    test_json_depth(client);
    test_json_no_body(client);
    test_unary_to_streaming(client);
    test_unknown_region(port);
    test_metadata_keys(client);
    test_register_after_stop();
    test_message_size(port);
    test_error_text_cap(client);

    meridian_client_free(client);
    meridian_server_free(server);
    unlink(ca_path);
    unlink(cert_path);
    unlink(key_path);
    rmdir(dir);
    if (failures) {
        fprintf(stderr, "test_contracts: %d check(s) failed\n", failures);
        return 1;
    }
    printf("test_contracts: all checks passed\n");
    return 0;
}
