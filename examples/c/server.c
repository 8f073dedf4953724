/* A Meridian server in C: `server DIR` writes development certificates into DIR, serves
 * `greet` (JSON: "Ada" -> "Hello, Ada!") and `upper` (raw bytes, upper-cased) on a free
 * loopback port, prints "PORT <n>", and stops gracefully when stdin closes. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "meridian.h"

static uint32_t greet(void *user, const meridian_request *req, meridian_reply *reply) {
    (void)user;
    const uint8_t *json;
    size_t len;
    char out[256];
    meridian_request_body(req, &json, &len); /* JSON text, NUL-terminated */
    if (len < 2 || json[0] != '"' || len > 200) {
        meridian_reply_set_error_message(reply, "greet takes a name (a JSON string)");
        return MERIDIAN_INVALID_ARGUMENT;
    }
    /* The JSON string without its quotes, inside a new JSON string. */
    int n = snprintf(out, sizeof out, "\"Hello, %.*s!\"", (int)(len - 2), (const char *)json + 1);
    return meridian_reply_set_body(reply, (const uint8_t *)out, (size_t)n);
}

static uint32_t upper(void *user, const meridian_request *req, meridian_reply *reply) {
    (void)user;
    const uint8_t *data;
    size_t len;
    meridian_request_body(req, &data, &len);
    uint8_t *out = malloc(len + 1);
    for (size_t i = 0; i < len; i++) out[i] = (uint8_t)toupper(data[i]);
    meridian_status st = meridian_reply_set_body(reply, out, len); /* copied */
    free(out);
    return st;
}

static int fail(const char *what, meridian_status st) {
    char text[256];
    size_t n;
    meridian_last_error(text, sizeof text, &n);
    fprintf(stderr, "%s: %s: %s\n", what, meridian_status_name(st), text);
    return 1;
}

int main(int argc, char **argv) {
    char cert[512], key[512];
    meridian_server *server = NULL;
    meridian_status st;
    uint16_t port;
    if (argc != 2) {
        fprintf(stderr, "usage: %s CERT_DIR\n", argv[0]);
        return 2;
    }
    if ((st = meridian_dev_certificates_write(argv[1])) != MERIDIAN_OK) return fail("certificates", st);
    snprintf(cert, sizeof cert, "%s/server.pem", argv[1]);
    snprintf(key, sizeof key, "%s/server.key", argv[1]);
    if ((st = meridian_server_new("example", &server)) != MERIDIAN_OK) return fail("server", st);
    meridian_server_add_unary(server, "greet", MERIDIAN_PAYLOAD_JSON, true, greet, NULL);
    meridian_server_add_unary(server, "upper", MERIDIAN_PAYLOAD_RAW, true, upper, NULL);
    if ((st = meridian_server_start(server, "127.0.0.1:0", cert, key)) != MERIDIAN_OK) {
        meridian_server_free(server);
        return fail("start", st);
    }
    meridian_server_port(server, &port);
    printf("PORT %u\n", (unsigned)port);
    fflush(stdout);
    while (getchar() != EOF) {
    }
    meridian_server_stop(server, 1000);
    meridian_server_free(server);
    return 0;
}
