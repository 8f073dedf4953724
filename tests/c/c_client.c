/* C client -> Rust server: `c_client PORT CA_PEM` calls meridian-test-server's typed Rust
 * handlers through JSON and raw bytes, and exits 0 when every check passed. */
#define _POSIX_C_SOURCE 200809L
#include "common.h"

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: c_client PORT CA_PEM\n");
        return 2;
    }
    meridian_client *client = connect_client((unsigned)atoi(argv[1]), argv[2]);
    meridian_response *resp = NULL;
    meridian_stream *stream = NULL;
    const uint8_t *data;
    size_t len;

    /* JSON -> Value -> the typed (i64, i64) handler, and back. */
    EXPECT_BODY(call_ok(client, "add", MERIDIAN_PAYLOAD_JSON, "[10, 5]", NULL), "15");
    EXPECT_BODY(call_ok(client, "echo", MERIDIAN_PAYLOAD_RAW, "bytes", NULL), "bytes");
    /* The Rust handler's own errors: overflow, and a request that does not fit (i64, i64). */
    EXPECT_STATUS(meridian_client_unary(client, "add", MERIDIAN_PAYLOAD_JSON,
                                        (const uint8_t *)"[9223372036854775807, 1]", 24, NULL, &resp),
                  MERIDIAN_OUT_OF_RANGE);
    EXPECT_STATUS(meridian_client_unary(client, "add", MERIDIAN_PAYLOAD_JSON,
                                        (const uint8_t *)"{\"x\": \"y\"}", 10, NULL, &resp),
                  MERIDIAN_INVALID_ARGUMENT);
    EXPECT_STATUS(meridian_client_unary(client, "add", MERIDIAN_PAYLOAD_JSON,
                                        (const uint8_t *)"not json", 8, NULL, &resp),
                  MERIDIAN_BAD_JSON);
    EXPECT_STATUS(meridian_client_unary(client, "missing", MERIDIAN_PAYLOAD_RAW, NULL, 0, NULL, &resp),
                  MERIDIAN_UNIMPLEMENTED);
    EXPECT(resp == NULL);
    /* Typed server streaming, read as JSON. */
    MUST(meridian_client_server_streaming(client, "count", MERIDIAN_PAYLOAD_JSON,
                                          (const uint8_t *)"3", 1, NULL, &stream));
    for (int i = 0; i < 3; i++) {
        char want[8];
        snprintf(want, sizeof want, "%d", i);
        EXPECT_STATUS(meridian_stream_next(stream, &data, &len), MERIDIAN_OK);
        EXPECT(strcmp((const char *)data, want) == 0);
    }
    EXPECT_STATUS(meridian_stream_next(stream, &data, &len), MERIDIAN_STREAM_END);
    uint64_t us = 0;
    EXPECT_STATUS(meridian_stream_server_time_us(stream, &us), MERIDIAN_OK);
    meridian_stream_free(stream);
    meridian_client_free(client);
    if (failures) {
        fprintf(stderr, "c_client: %d check(s) failed\n", failures);
        return 1;
    }
    printf("c_client: C client -> Rust server: all checks passed\n");
    return 0;
}
