/* Mutual TLS, the peer identity a C handler reads, and certificate rotation with
 * meridian_server_reload_tls: C client -> C server in one process, over real QUIC on
 * loopback. Exit status 0 when every check passed. */
#define _POSIX_C_SOURCE 200809L
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"

#define SPIFFE "spiffe://meridian.test/c-client"

static atomic_int whoami_runs;

/* Copies one identity field into `out` ("-" when the library says it is absent). */
static void text_or_dash(meridian_status st, const char *buf, char *out, size_t cap) {
    snprintf(out, cap, "%s", st == MERIDIAN_OK ? buf : "-");
}

/* Checks the buffer convention of the peer getters; returns 1 when every check holds. */
static int buffer_convention_holds(const meridian_request *req, bool verified, size_t uris) {
    char small[4];
    size_t len = 0;
    int ok = 1;
    if (meridian_request_peer_uri(NULL, 0, small, sizeof small, &len) != MERIDIAN_NULL_PARAMETER)
        ok = 0;
    if (meridian_request_peer_address(req, small, sizeof small, NULL) != MERIDIAN_NULL_PARAMETER)
        ok = 0;
    if (meridian_request_peer_uri(req, uris, small, sizeof small, &len) !=
        MERIDIAN_INVALID_PARAMETER)
        ok = 0;
    if (meridian_request_peer_dns_name_count(req, NULL) != MERIDIAN_NULL_PARAMETER) ok = 0;
    if (verified) {
        /* Length first (NULL, 0), then a buffer one byte short of the NUL. */
        size_t need = 0;
        if (meridian_request_peer_spiffe_id(req, NULL, 0, &need) != MERIDIAN_OK) ok = 0;
        if (need != strlen(SPIFFE)) ok = 0;
        char *exact = malloc(need);
        if (exact == NULL ||
            meridian_request_peer_spiffe_id(req, exact, need, &len) != MERIDIAN_OUT_OF_RANGE ||
            len != need)
            ok = 0;
        free(exact);
        if (meridian_request_peer_spiffe_id(req, NULL, 5, &len) != MERIDIAN_NULL_PARAMETER) ok = 0;
    } else {
        if (meridian_request_peer_common_name(req, small, sizeof small, &len) !=
            MERIDIAN_NOT_PRESENT)
            ok = 0;
        if (meridian_request_peer_spiffe_id(req, small, sizeof small, &len) != MERIDIAN_NOT_PRESENT)
            ok = 0;
        const uint8_t *der = NULL;
        if (meridian_request_peer_certificate(req, 0, &der, &len) != MERIDIAN_INVALID_PARAMETER)
            ok = 0;
    }
    return ok;
}

/* Answers with what the request says about its caller:
 * "verified=V;uris=N;uri0=U;dns0=D;cn=C;spiffe=S;certs=K;der0=L;addr=IP;buffers=B". */
static uint32_t h_whoami(void *user, const meridian_request *req, meridian_reply *reply) {
    (void)user;
    atomic_fetch_add(&whoami_runs, 1);
    bool verified = false;
    size_t uris = 0, dns = 0, certs = 0, len = 0, der_len = 0;
    char buf[256], uri0[256], dns0[256], cn[256], spiffe[256], addr[64];
    const uint8_t *der = NULL;
    if (meridian_request_peer_verified(req, &verified) != MERIDIAN_OK) return MERIDIAN_INTERNAL;
    if (meridian_request_peer_uri_count(req, &uris) != MERIDIAN_OK) return MERIDIAN_INTERNAL;
    if (meridian_request_peer_dns_name_count(req, &dns) != MERIDIAN_OK) return MERIDIAN_INTERNAL;
    if (meridian_request_peer_certificate_count(req, &certs) != MERIDIAN_OK)
        return MERIDIAN_INTERNAL;
    text_or_dash(uris > 0 ? meridian_request_peer_uri(req, 0, buf, sizeof buf, &len)
                          : MERIDIAN_NOT_PRESENT,
                 buf, uri0, sizeof uri0);
    text_or_dash(dns > 0 ? meridian_request_peer_dns_name(req, 0, buf, sizeof buf, &len)
                         : MERIDIAN_NOT_PRESENT,
                 buf, dns0, sizeof dns0);
    text_or_dash(meridian_request_peer_common_name(req, buf, sizeof buf, &len), buf, cn,
                 sizeof cn);
    text_or_dash(meridian_request_peer_spiffe_id(req, buf, sizeof buf, &len), buf, spiffe,
                 sizeof spiffe);
    if (certs > 0 && meridian_request_peer_certificate(req, 0, &der, &der_len) != MERIDIAN_OK)
        return MERIDIAN_INTERNAL;
    if (meridian_request_peer_address(req, addr, sizeof addr, &len) != MERIDIAN_OK)
        return MERIDIAN_INTERNAL;
    char *colon = strrchr(addr, ':');
    if (colon != NULL) *colon = 0; /* keep the IP: the port is the client's own */
    int buffers = buffer_convention_holds(req, verified, uris);
    char out[1400];
    int n = snprintf(out, sizeof out,
                     "verified=%d;uris=%zu;uri0=%s;dns0=%s;cn=%s;spiffe=%s;certs=%zu;der0=%s;"
                     "addr=%s;buffers=%d",
                     verified ? 1 : 0, uris, uri0, dns0, cn, spiffe, certs,
                     der_len > 100 ? "yes" : "no", addr, buffers);
    return meridian_reply_set_body(reply, (const uint8_t *)out, (size_t)n);
}

static uint32_t h_ping(void *user, const meridian_request *req, meridian_reply *reply) {
    (void)user;
    const uint8_t *data = NULL;
    size_t len = 0;
    if (meridian_request_body(req, &data, &len) != MERIDIAN_OK) return MERIDIAN_INTERNAL;
    return meridian_reply_set_body(reply, data, len);
}

/* A client of 127.0.0.1:port trusting ca, presenting cert/key if not NULL. The client
 * connects in meridian_client_new; its status is returned and *out set on success. */
static meridian_status make_client(unsigned port, const char *ca, const char *cert,
                                   const char *key, meridian_client **out) {
    meridian_client_config *cfg = NULL;
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%u", port);
    MUST(meridian_client_config_new(&cfg));
    MUST(meridian_client_config_add_endpoint(cfg, NULL, addr, "localhost"));
    MUST(meridian_client_config_set_roots_pem_file(cfg, ca));
    MUST(meridian_client_config_set_connect_timeout_ms(cfg, 3000));
    if (cert != NULL) MUST(meridian_client_config_set_identity_pem_files(cfg, cert, key));
    *out = NULL;
    meridian_status st = meridian_client_new(cfg, out);
    meridian_client_config_free(cfg);
    return st;
}

/* The status of one raw call (the body, if any, is dropped). */
static meridian_status ping(meridian_client *client) {
    meridian_response *resp = NULL;
    meridian_call_options *opts = NULL;
    MUST(meridian_call_options_new(&opts));
    MUST(meridian_call_options_set_timeout_ms(opts, 5000));
    meridian_status st =
        meridian_client_unary(client, "ping", MERIDIAN_PAYLOAD_RAW, (const uint8_t *)"p", 1, opts,
                              &resp);
    meridian_response_free(resp);
    meridian_call_options_free(opts);
    return st;
}

/* Whether a client of `port` with this trust and certificate cannot call: refused when
 * connecting or at its first call. */
static int refused(unsigned port, const char *ca, const char *cert, const char *key) {
    meridian_client *client = NULL;
    meridian_status st = make_client(port, ca, cert, key, &client);
    if (st == MERIDIAN_OK) {
        st = ping(client);
        meridian_client_free(client);
    }
    if (st == MERIDIAN_OK) return 0;
    if (st != MERIDIAN_UNAVAILABLE) {
        fprintf(stderr, "refused with %s (%s), expected UNAVAILABLE\n", meridian_status_name(st),
                last_error());
        return 0;
    }
    return 1;
}

static void copy_file(const char *from, const char *to) {
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp", to);
    FILE *in = fopen(from, "rb");
    FILE *out = fopen(tmp, "wb");
    if (in == NULL || out == NULL) {
        fprintf(stderr, "FATAL cannot copy %s to %s\n", from, to);
        exit(2);
    }
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0) fwrite(buf, 1, n, out);
    fclose(in);
    fclose(out);
    /* Atomic replacement, as a rotation job should do it. */
    if (rename(tmp, to) != 0) exit(2);
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (f == NULL) exit(2);
    fputs(text, f);
    fclose(f);
}

struct pki {
    char dir[64], ca[128], server_cert[128], server_key[128], client_cert[128], client_key[128];
};

static void make_pki(struct pki *p, const char *client_uri) {
    snprintf(p->dir, sizeof p->dir, "/tmp/meridian-c-tls-XXXXXX");
    if (mkdtemp(p->dir) == NULL) exit(2);
    MUST(meridian_dev_mtls_certificates_write(p->dir, "c-client", client_uri));
    snprintf(p->ca, sizeof p->ca, "%s/ca.pem", p->dir);
    snprintf(p->server_cert, sizeof p->server_cert, "%s/server.pem", p->dir);
    snprintf(p->server_key, sizeof p->server_key, "%s/server.key", p->dir);
    snprintf(p->client_cert, sizeof p->client_cert, "%s/client.pem", p->dir);
    snprintf(p->client_key, sizeof p->client_key, "%s/client.key", p->dir);
}

static void remove_pki(struct pki *p) {
    const char *names[] = {"ca.pem", "server.pem", "server.key", "client.pem", "client.key"};
    char path[160];
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", p->dir, names[i]);
        unlink(path);
    }
    rmdir(p->dir);
}

static meridian_server *start_server(const char *client_ca, const char *cert, const char *key,
                                     unsigned *port) {
    meridian_server *server = NULL;
    uint16_t p = 0;
    MUST(meridian_server_new("tls", &server));
    MUST(meridian_server_add_unary(server, "whoami", MERIDIAN_PAYLOAD_RAW, false, h_whoami, NULL));
    MUST(meridian_server_add_unary(server, "ping", MERIDIAN_PAYLOAD_RAW, true, h_ping, NULL));
    if (client_ca != NULL) MUST(meridian_server_require_client_certs_pem_file(server, client_ca));
    MUST(meridian_server_start(server, "127.0.0.1:0", cert, key));
    MUST(meridian_server_port(server, &p));
    *port = p;
    return server;
}

static void test_argument_errors(const struct pki *a) {
    meridian_server *server = NULL;
    meridian_client *client = NULL;
    size_t n = 0;
    bool b = false;
    EXPECT_STATUS(meridian_server_reload_tls(NULL), MERIDIAN_NULL_PARAMETER);
    EXPECT_STATUS(meridian_server_require_client_certs_pem_file(NULL, a->ca),
                  MERIDIAN_NULL_PARAMETER);
    EXPECT_STATUS(meridian_client_config_set_identity_pem_files(NULL, "c", "k"),
                  MERIDIAN_NULL_PARAMETER);
    EXPECT_STATUS(meridian_request_peer_verified(NULL, &b), MERIDIAN_NULL_PARAMETER);
    EXPECT_STATUS(meridian_request_peer_uri_count(NULL, &n), MERIDIAN_NULL_PARAMETER);
    EXPECT_STATUS(meridian_request_peer_certificate_count(NULL, &n), MERIDIAN_NULL_PARAMETER);
    EXPECT_STATUS(meridian_dev_mtls_certificates_write(NULL, "x", NULL), MERIDIAN_NULL_PARAMETER);
    EXPECT_STATUS(meridian_dev_mtls_certificates_write("/nonexistent/dir", "x", NULL),
                  MERIDIAN_CONFIG_ERROR);

    MUST(meridian_server_new("tls", &server));
    MUST(meridian_server_add_unary(server, "ping", MERIDIAN_PAYLOAD_RAW, true, h_ping, NULL));
    EXPECT_STATUS(meridian_server_require_client_certs_pem_file(server, NULL),
                  MERIDIAN_NULL_PARAMETER);
    /* Not running: nothing to reload. */
    EXPECT_STATUS(meridian_server_reload_tls(server), MERIDIAN_INVALID_STATE);
    /* A client CA file without a certificate in it fails the start. */
    MUST(meridian_server_require_client_certs_pem_file(server, a->server_key));
    EXPECT_STATUS(meridian_server_start(server, "127.0.0.1:0", a->server_cert, a->server_key),
                  MERIDIAN_CONFIG_ERROR);
    MUST(meridian_server_require_client_certs_pem_file(server, "/nonexistent/ca.pem"));
    EXPECT_STATUS(meridian_server_start(server, "127.0.0.1:0", a->server_cert, a->server_key),
                  MERIDIAN_CONFIG_ERROR);
    /* A key that is not the certificate's. */
    MUST(meridian_server_require_client_certs_pem_file(server, a->ca));
    EXPECT_STATUS(meridian_server_start(server, "127.0.0.1:0", a->server_cert, a->client_key),
                  MERIDIAN_CONFIG_ERROR);
    MUST(meridian_server_start(server, "127.0.0.1:0", a->server_cert, a->server_key));
    EXPECT_STATUS(meridian_server_require_client_certs_pem_file(server, a->ca),
                  MERIDIAN_INVALID_STATE);
    uint16_t port = 0;
    MUST(meridian_server_port(server, &port));
    /* Unreadable client certificate files fail meridian_client_new. */
    EXPECT_STATUS(make_client(port, a->ca, "/nonexistent/client.pem", a->client_key, &client),
                  MERIDIAN_CONFIG_ERROR);
    EXPECT(client == NULL);
    EXPECT_STATUS(make_client(port, a->ca, a->client_cert, "/nonexistent/client.key", &client),
                  MERIDIAN_CONFIG_ERROR);
    EXPECT(client == NULL);
    MUST(meridian_server_stop(server, 0));
    EXPECT_STATUS(meridian_server_reload_tls(server), MERIDIAN_INVALID_STATE);
    meridian_server_free(server);
}

/* A server requiring client certificates: the handler reads the client's names. */
static void test_mutual_tls(const struct pki *a) {
    unsigned port = 0;
    meridian_server *server = start_server(a->ca, a->server_cert, a->server_key, &port);
    meridian_client *client = NULL;
    MUST(make_client(port, a->ca, a->client_cert, a->client_key, &client));
    EXPECT_BODY(call_ok(client, "whoami", MERIDIAN_PAYLOAD_RAW, "", NULL),
                "verified=1;uris=1;uri0=" SPIFFE ";dns0=c-client;cn=c-client;spiffe=" SPIFFE
                ";certs=2;der0=yes;addr=127.0.0.1;buffers=1");
    EXPECT(atomic_load(&whoami_runs) == 1);
    meridian_client_free(client);

    /* The chain as the client sent it: its certificate, then the dev CA. Without a
       certificate: refused, and the handler never runs. */
    EXPECT(refused(port, a->ca, NULL, NULL));
    EXPECT(atomic_load(&whoami_runs) == 1);
    meridian_server_free(server);
}

/* Without mutual TLS the handler sees no identity, but the peer address. */
static void test_without_mutual_tls(const struct pki *a) {
    unsigned port = 0;
    meridian_server *server = start_server(NULL, a->server_cert, a->server_key, &port);
    meridian_client *client = NULL;
    /* A client certificate the server does not ask for is harmless. */
    MUST(make_client(port, a->ca, a->client_cert, a->client_key, &client));
    EXPECT_BODY(call_ok(client, "whoami", MERIDIAN_PAYLOAD_RAW, "", NULL),
                "verified=0;uris=0;uri0=-;dns0=-;cn=-;spiffe=-;certs=0;der0=no;addr=127.0.0.1;"
                "buffers=1");
    meridian_client_free(client);
    meridian_server_free(server);
}

/* Rotation: new clients see the new certificate, a client connected before keeps
 * calling; bad files are refused and the certificate in use stays. */
static void test_reload(const struct pki *a, const struct pki *b, const char *live) {
    char cert[160], key[160];
    snprintf(cert, sizeof cert, "%s/server.pem", live);
    snprintf(key, sizeof key, "%s/server.key", live);
    copy_file(a->server_cert, cert);
    copy_file(a->server_key, key);
    unsigned port = 0;
    /* Client certificates from CA a, throughout. */
    meridian_server *server = start_server(a->ca, cert, key, &port);
    meridian_client *before = NULL;
    MUST(make_client(port, a->ca, a->client_cert, a->client_key, &before));
    EXPECT_STATUS(ping(before), MERIDIAN_OK);

    /* Rotate to the certificate of CA b. */
    copy_file(b->server_cert, cert);
    copy_file(b->server_key, key);
    EXPECT_STATUS(meridian_server_reload_tls(server), MERIDIAN_OK);
    meridian_client *after = NULL;
    EXPECT_STATUS(make_client(port, b->ca, a->client_cert, a->client_key, &after), MERIDIAN_OK);
    if (after != NULL) EXPECT_STATUS(ping(after), MERIDIAN_OK);
    meridian_client_free(after);
    /* A new client trusting only the old CA is refused: the server presents the new one. */
    EXPECT(refused(port, a->ca, a->client_cert, a->client_key));
    /* The client connected before the reload goes on calling on its connection. */
    for (int i = 0; i < 5; i++) EXPECT_STATUS(ping(before), MERIDIAN_OK);

    /* Bad files: garbage, a key of another certificate, a missing file. */
    write_text(cert, "not a certificate\n");
    EXPECT_STATUS(meridian_server_reload_tls(server), MERIDIAN_CONFIG_ERROR);
    copy_file(a->server_cert, cert); /* the key is still b's */
    EXPECT_STATUS(meridian_server_reload_tls(server), MERIDIAN_CONFIG_ERROR);
    unlink(key);
    EXPECT_STATUS(meridian_server_reload_tls(server), MERIDIAN_CONFIG_ERROR);
    /* The certificate of b is still the one presented, and everyone still calls. */
    MUST(make_client(port, b->ca, a->client_cert, a->client_key, &after));
    EXPECT_STATUS(ping(after), MERIDIAN_OK);
    meridian_client_free(after);
    EXPECT(refused(port, a->ca, a->client_cert, a->client_key));
    EXPECT_STATUS(ping(before), MERIDIAN_OK);

    meridian_client_free(before);
    meridian_server_free(server);
    unlink(cert);
    unlink(key);
}

/* Both sides move to CA b: the server rereads its certificate and its client CA file,
 * the client its roots and certificate; open connections keep calling, bad client files
 * are refused and keep what was in use. (That new handshakes use the reloaded client
 * files is shown over QUIC by the Rust and Python suites, whose clients can reconnect.) */
static void test_reload_both_sides(const struct pki *a, const struct pki *b, const char *live) {
    char cert[160], key[160], cas[160], roots[160], ccert[160], ckey[160];
    snprintf(cert, sizeof cert, "%s/server.pem", live);
    snprintf(key, sizeof key, "%s/server.key", live);
    snprintf(cas, sizeof cas, "%s/clients.pem", live);
    snprintf(roots, sizeof roots, "%s/roots.pem", live);
    snprintf(ccert, sizeof ccert, "%s/client.pem", live);
    snprintf(ckey, sizeof ckey, "%s/client.key", live);
    copy_file(a->server_cert, cert);
    copy_file(a->server_key, key);
    copy_file(a->ca, cas);
    copy_file(a->ca, roots);
    copy_file(a->client_cert, ccert);
    copy_file(a->client_key, ckey);
    unsigned port = 0;
    meridian_server *server = start_server(cas, cert, key, &port);
    meridian_client *client = NULL;
    MUST(make_client(port, roots, ccert, ckey, &client));
    EXPECT_STATUS(ping(client), MERIDIAN_OK);
    EXPECT_STATUS(meridian_client_reload_tls(NULL), MERIDIAN_NULL_PARAMETER);

    copy_file(b->server_cert, cert);
    copy_file(b->server_key, key);
    copy_file(b->ca, cas);
    EXPECT_STATUS(meridian_server_reload_tls(server), MERIDIAN_OK);
    /* The server now wants client certificates from b: a new client with a's is refused,
     * one with b's is served. */
    EXPECT(refused(port, b->ca, a->client_cert, a->client_key));
    meridian_client *fresh = NULL;
    EXPECT_STATUS(make_client(port, b->ca, b->client_cert, b->client_key, &fresh), MERIDIAN_OK);
    if (fresh != NULL) EXPECT_STATUS(ping(fresh), MERIDIAN_OK);
    meridian_client_free(fresh);
    /* The client connected before keeps calling. */
    EXPECT_STATUS(ping(client), MERIDIAN_OK);

    /* Its files move to b; a broken roots file is refused first, keeping what was used. */
    write_text(roots, "garbage\n");
    EXPECT_STATUS(meridian_client_reload_tls(client), MERIDIAN_CONFIG_ERROR);
    copy_file(b->ca, roots);
    copy_file(b->client_cert, ccert);
    copy_file(b->client_key, ckey);
    EXPECT_STATUS(meridian_client_reload_tls(client), MERIDIAN_OK);
    EXPECT_STATUS(ping(client), MERIDIAN_OK);

    meridian_client_free(client);
    meridian_server_free(server);
    const char *files[] = {cert, key, cas, roots, ccert, ckey};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) unlink(files[i]);
}

int main(void) {
    struct pki a, b;
    make_pki(&a, SPIFFE);
    make_pki(&b, NULL);
    char live[] = "/tmp/meridian-c-live-XXXXXX";
    if (mkdtemp(live) == NULL) return 2;

    test_argument_errors(&a);
    test_mutual_tls(&a);
    test_without_mutual_tls(&a);
    test_reload(&a, &b, live);
    test_reload_both_sides(&a, &b, live);

    rmdir(live);
    remove_pki(&a);
    remove_pki(&b);
    if (failures) {
        fprintf(stderr, "test_tls: %d check(s) failed\n", failures);
        return 1;
    }
    printf("test_tls: all checks passed\n");
    return 0;
}
