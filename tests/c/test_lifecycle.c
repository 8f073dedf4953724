/* meridian_init and meridian_shutdown, C client -> C server over real QUIC on loopback:
 * the worker thread count takes effect (threads named meridian-worker in /proc/self/task),
 * the log callback receives the library's events up to the level asked for, init after
 * the runtime started is refused, shutdown makes older handles fail clearly (and they
 * free cleanly), and a second init starts a new runtime with new settings.
 * Exit status 0 when every check passed. */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#include "common.h"
#include "handlers.h"

static char ca_path[256], cert_path[256], key_path[256];

static atomic_int events, verbose_events, targeted;

static void on_log(void *user, uint32_t level, const char *target, const char *message) {
    atomic_int *tag = user;
    atomic_fetch_add(tag, 1);
    atomic_fetch_add(&events, 1);
    if (level > MERIDIAN_LOG_ERROR) atomic_fetch_add(&verbose_events, 1);
    if (target != NULL && target[0] != 0 && message != NULL) atomic_fetch_add(&targeted, 1);
}

/* Threads of this process whose name is "meridian-worker". */
static int worker_threads(void) {
    DIR *d = opendir("/proc/self/task");
    if (d == NULL) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        char path[300], name[64] = "";
        snprintf(path, sizeof path, "/proc/self/task/%s/comm", e->d_name);
        FILE *f = fopen(path, "r");
        if (f == NULL) continue;
        if (fgets(name, sizeof name, f) != NULL && strncmp(name, "meridian-worker", 15) == 0) n++;
        fclose(f);
    }
    closedir(d);
    return n;
}

/* Waits up to 3 s for exactly `want` worker threads; returns the last count seen. */
static int await_workers(int want) {
    int n = -1;
    for (int i = 0; i < 300; i++) {
        n = worker_threads();
        if (n == want) break;
        sleep_ms(10);
    }
    return n;
}

static meridian_server *start(uint16_t *port) {
    meridian_server *s = NULL;
    MUST(meridian_server_new("life", &s));
    MUST(register_handlers(s));
    MUST(meridian_server_start(s, "127.0.0.1:0", cert_path, key_path));
    MUST(meridian_server_port(s, port));
    return s;
}

int main(void) {
    char dir[] = "/tmp/meridian-c-life-XXXXXX";
    if (mkdtemp(dir) == NULL) return 2;
    MUST(meridian_dev_certificates_write(dir));
    snprintf(ca_path, sizeof ca_path, "%s/ca.pem", dir);
    snprintf(cert_path, sizeof cert_path, "%s/server.pem", dir);
    snprintf(key_path, sizeof key_path, "%s/server.key", dir);

    /* Bad options are refused; NULL is the defaults. */
    static atomic_int first_tag, second_tag;
    meridian_init_options o;
    memset(&o, 0, sizeof o);
    o.struct_size = 4;
    EXPECT_STATUS(meridian_init(&o), MERIDIAN_INVALID_PARAMETER);
    o.struct_size = sizeof o;
    o.log_max_level = 9;
    EXPECT_STATUS(meridian_init(&o), MERIDIAN_INVALID_PARAMETER);
    o.log_max_level = 0;
    o.worker_threads = 5000;
    EXPECT_STATUS(meridian_init(&o), MERIDIAN_INVALID_PARAMETER);
    EXPECT_STATUS(meridian_init(NULL), MERIDIAN_OK);

    /* First runtime: 3 workers, everything logged. */
    o.worker_threads = 3;
    o.log = on_log;
    o.log_user = &first_tag;
    o.log_max_level = MERIDIAN_LOG_TRACE;
    MUST(meridian_init(&o));
    EXPECT(worker_threads() == 0); /* not started yet: init is lazy */
    uint16_t port = 0;
    meridian_server *server = start(&port);
    meridian_client *client = connect_client(port, ca_path);
    EXPECT(await_workers(3) == 3);
    EXPECT_BODY(call_ok(client, "echo", 0, "one", NULL), "one");
    EXPECT(atomic_load(&first_tag) > 0);
    EXPECT(atomic_load(&targeted) == atomic_load(&events));
    EXPECT(atomic_load(&verbose_events) > 0);
    printf("first runtime: %d log events\n", atomic_load(&events));

    /* Too late now. */
    EXPECT_STATUS(meridian_init(&o), MERIDIAN_INVALID_STATE);
    EXPECT(strstr(last_error(), "already runs") != NULL);

    /* Shutdown: older handles fail clearly, and free cleanly. */
    EXPECT_STATUS(meridian_shutdown(2000), MERIDIAN_OK);
    meridian_response *resp = NULL;
    EXPECT_STATUS(meridian_client_unary(client, "echo", 0, (const uint8_t *)"x", 1, NULL, &resp),
                  MERIDIAN_INVALID_STATE);
    EXPECT(strstr(last_error(), "meridian_shutdown") != NULL);
    EXPECT(resp == NULL);
    EXPECT_STATUS(meridian_server_stop(server, 0), MERIDIAN_INVALID_STATE);
    meridian_client_free(client);
    meridian_server_free(server);
    EXPECT_STATUS(meridian_shutdown(0), MERIDIAN_OK); /* harmless twice */
    EXPECT(await_workers(0) == 0);

    /* Second runtime: 2 workers, errors only (a normal call logs none). */
    o.worker_threads = 2;
    o.log_user = &second_tag;
    o.log_max_level = MERIDIAN_LOG_ERROR;
    MUST(meridian_init(&o));
    atomic_store(&verbose_events, 0);
    server = start(&port);
    client = connect_client(port, ca_path);
    EXPECT(await_workers(2) == 2);
    EXPECT_BODY(call_ok(client, "add", MERIDIAN_PAYLOAD_JSON, "[20, 22]", NULL), "42");
    EXPECT(atomic_load(&verbose_events) == 0);
    meridian_client_free(client);
    MUST(meridian_server_stop(server, 500));
    meridian_server_free(server);
    MUST(meridian_shutdown(2000));

    /* Without init, first use starts a runtime with the defaults again. */
    MUST(meridian_init(NULL));
    server = start(&port);
    client = connect_client(port, ca_path);
    EXPECT_BODY(call_ok(client, "echo", 0, "three", NULL), "three");
    EXPECT(atomic_load(&second_tag) == 0 || atomic_load(&verbose_events) == 0);
    meridian_client_free(client);
    meridian_server_free(server);
    MUST(meridian_shutdown(2000));

    unlink(ca_path);
    unlink(cert_path);
    unlink(key_path);
    rmdir(dir);
    if (failures) {
        fprintf(stderr, "test_lifecycle: %d check(s) failed\n", failures);
        return 1;
    }
    printf("test_lifecycle: all checks passed\n");
    return 0;
}
