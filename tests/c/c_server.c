/* The C test server as its own process, for clients in other languages (the Rust test
 * client). `c_server DIR`: writes development certificates into DIR, serves the methods of
 * handlers.h on a free loopback port, prints "PORT <n>", and stops when stdin closes. */
#define _POSIX_C_SOURCE 200809L
#include "common.h"
#include "handlers.h"

int main(int argc, char **argv) {
    char cert[512], key[512];
    meridian_server *server = NULL;
    uint16_t port = 0;
    if (argc != 2) {
        fprintf(stderr, "usage: c_server DIR\n");
        return 2;
    }
    MUST(meridian_dev_certificates_write(argv[1]));
    snprintf(cert, sizeof cert, "%s/server.pem", argv[1]);
    snprintf(key, sizeof key, "%s/server.key", argv[1]);
    MUST(meridian_server_new("c", &server));
    MUST(register_handlers(server));
    MUST(meridian_server_start(server, "127.0.0.1:0", cert, key));
    MUST(meridian_server_port(server, &port));
    printf("PORT %u\n", (unsigned)port);
    fflush(stdout);
    while (getchar() != EOF) {
    }
    MUST(meridian_server_stop(server, 500));
    meridian_server_free(server);
    return 0;
}
