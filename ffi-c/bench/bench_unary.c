/* The C side of the boundary benchmark: `bench_unary PORT CA_PEM CALLS` makes CALLS
 * blocking unary calls (64 raw bytes to `echo`) through libmeridian after a warm-up and
 * prints "c p50_us=<..> mean_us=<..>". Its Rust twin is src/bin/meridian-bench-rust.rs. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "meridian.h"

static double now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc != 4) return 2;
    int calls = atoi(argv[3]);
    char addr[64];
    uint8_t payload[64];
    memset(payload, 'x', sizeof payload);
    snprintf(addr, sizeof addr, "127.0.0.1:%s", argv[1]);
    meridian_client_config *cfg = NULL;
    meridian_client *client = NULL;
    meridian_client_config_new(&cfg);
    meridian_client_config_add_endpoint(cfg, NULL, addr, "localhost");
    meridian_client_config_set_roots_pem_file(cfg, argv[2]);
    if (meridian_client_new(cfg, &client) != MERIDIAN_OK) return 1;
    meridian_client_config_free(cfg);
    double *lat = malloc(sizeof(double) * (size_t)calls);
    for (int i = -calls / 5; i < calls; i++) { /* the first fifth warms up */
        meridian_response *r = NULL;
        double t0 = now_us();
        if (meridian_client_unary(client, "echo", MERIDIAN_PAYLOAD_RAW, payload, sizeof payload,
                                  NULL, &r) != MERIDIAN_OK)
            return 1;
        const uint8_t *d;
        size_t n;
        meridian_response_body(r, &d, &n);
        meridian_response_free(r);
        if (i >= 0) lat[i] = now_us() - t0;
    }
    double sum = 0;
    for (int i = 0; i < calls; i++) sum += lat[i];
    qsort(lat, (size_t)calls, sizeof(double), cmp);
    printf("c p50_us=%.1f mean_us=%.1f\n", lat[calls / 2], sum / calls);
    free(lat);
    meridian_client_free(client);
    return 0;
}
