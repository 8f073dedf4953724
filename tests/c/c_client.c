/* C client -> Rust server: `c_client PORT CA_PEM [PROXY_PORT]` calls meridian-test-server's
 * typed Rust handlers through JSON and raw bytes (and, given PROXY_PORT, through the region
 * proxy in front of it, reading each hop's time), and exits 0 when every check passed. */
#define _POSIX_C_SOURCE 200809L
#include "common.h"

int main(int argc, char **argv) {
    if (argc != 3 && argc != 4) {
        fprintf(stderr, "usage: c_client PORT CA_PEM [PROXY_PORT]\n");
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
    /* A direct call has no proxy hops, and nothing is written. */
    uint64_t hop[3] = {7, 7, 7};
    MUST(meridian_client_unary(client, "add", MERIDIAN_PAYLOAD_JSON, (const uint8_t *)"[1, 2]", 6,
                               NULL, &resp));
    EXPECT_STATUS(meridian_response_proxy_hops_us(resp, &hop[0], &hop[1], &hop[2]),
                  MERIDIAN_NOT_PRESENT);
    EXPECT(hop[0] == 7 && hop[1] == 7 && hop[2] == 7);
    EXPECT_STATUS(meridian_response_proxy_hops_us(resp, NULL, &hop[1], &hop[2]), MERIDIAN_NULL_PARAMETER);
    meridian_response_free(resp);
    resp = NULL;
    meridian_client_free(client);
    if (argc == 4) {
        /* Through the region proxy: same answer, and the time split by hop. */
        meridian_client *via = connect_client((unsigned)atoi(argv[3]), argv[2]);
        MUST(meridian_client_unary(via, "add", MERIDIAN_PAYLOAD_JSON, (const uint8_t *)"[10, 5]", 7,
                                   NULL, &resp));
        MUST(meridian_response_body(resp, &data, &len));
        EXPECT(strcmp((const char *)data, "15") == 0);
        uint64_t server = 0, total = 0;
        EXPECT_STATUS(meridian_response_proxy_hops_us(resp, &hop[0], &hop[1], &hop[2]), MERIDIAN_OK);
        EXPECT_STATUS(meridian_response_server_time_us(resp, &server), MERIDIAN_OK);
        MUST(meridian_response_total_time_us(resp, &total));
        /* The parts (each rounded down to a microsecond) fit in the whole call. */
        EXPECT(hop[0] + hop[1] + hop[2] + server <= total);
        EXPECT(hop[0] > 0 && hop[2] > 0);
        meridian_response_free(resp);
        meridian_client_free(via);
    }
    if (failures) {
        fprintf(stderr, "c_client: %d check(s) failed\n", failures);
        return 1;
    }
    printf("c_client: C client -> Rust server: all checks passed\n");
    return 0;
}
