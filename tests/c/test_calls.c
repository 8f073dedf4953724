/* Call shapes beyond the plain unary call, C client -> C server over real QUIC on loopback
 * in one process:
 * - meridian_client_unary_ex: a failed call's status, message and trailers in a response;
 * - meridian_client_unary_start: an asynchronous call that can be cancelled (the handler
 *   sees the cancellation; the callback runs once, with MERIDIAN_CANCELLED), and whose
 *   failed response carries trailers;
 * - deferred replies: a handler returns at once and another thread answers later (a body,
 *   an error with trailers); a deferred reply freed without an answer gives the caller a
 *   clear status at once; an answer after the call ended is MERIDIAN_CANCELLED;
 * - client-streaming and bidirectional calls (meridian_client_open_call, C handlers that
 *   read with meridian_request_next): ordered messages both ways, raw and JSON, the
 *   sticky end, cancellation by meridian_call_free reaching the handler, a deadline.
 * Exit status 0 when every check passed. */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "common.h"
#include "handlers.h"

static char ca_path[256], cert_path[256], key_path[256];

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* raw: fails with NOT_FOUND, a message and two trailers. */
static uint32_t h_fail_trailers(void *user, const meridian_request *req, meridian_reply *reply) {
    (void)user;
    (void)req;
    meridian_reply_set_trailer(reply, "retry-after-ms", (const uint8_t *)"250", 3);
    meridian_reply_set_trailer(reply, "x-bin", (const uint8_t *)"a\0b", 3);
    meridian_reply_set_error_message(reply, "no such user");
    return MERIDIAN_NOT_FOUND;
}

/* raw: takes up to 5 s, noticing cancellation; counts the cancellations it saw. */
static atomic_int slow_cancelled;
static uint32_t h_slow_watch(void *user, const meridian_request *req, meridian_reply *reply) {
    (void)user;
    for (int i = 0; i < 500; i++) {
        bool cancelled = false;
        meridian_request_is_cancelled(req, &cancelled);
        if (cancelled) {
            atomic_fetch_add(&slow_cancelled, 1);
            return MERIDIAN_CANCELLED;
        }
        sleep_ms(10);
    }
    return meridian_reply_set_body(reply, (const uint8_t *)"late", 4);
}

/* --- Deferred replies: the handler hands the reply to a worker thread. --- */

struct deferred_job {
    meridian_deferred_reply *d;
    char request[64];
    meridian_status finish_status; /* what meridian_deferred_finish returned */
    bool saw_over;                  /* "too-late": the call was over before the answer */
};

static atomic_int jobs_done, jobs_made;
static struct deferred_job *last_job;
static struct deferred_job *all_jobs[64]; /* freed by main once every worker is done */

static void *deferred_worker(void *arg) {
    struct deferred_job *job = arg;
    meridian_status st;
    if (strcmp(job->request, "drop") == 0) {
        sleep_ms(50);
        meridian_deferred_free(job->d);
        st = MERIDIAN_OK;
    } else if (strcmp(job->request, "fail") == 0) {
        sleep_ms(50);
        meridian_deferred_set_trailer(job->d, "why", (const uint8_t *)"later", 5);
        st = meridian_deferred_finish(job->d, MERIDIAN_PERMISSION_DENIED, NULL, 0, "not you");
    } else if (strcmp(job->request, "too-late") == 0) {
        /* The caller's deadline is 100 ms. Answer once the server knows the call is over:
           under valgrind, which runs one thread at a time, the server's thread has taken
           over 2 s to get its turn to end the call, so no fixed sleep is long enough.
           At most 20 s. */
        sleep_ms(150);
        bool over = false;
        for (int i = 0; i < 2000 && !over; i++) {
            if (meridian_deferred_is_cancelled(job->d, &over) != MERIDIAN_OK) break;
            if (!over) sleep_ms(10);
        }
        job->saw_over = over;
        st = meridian_deferred_finish(job->d, MERIDIAN_OK, (const uint8_t *)"x", 1, NULL);
    } else {
        sleep_ms(100);
        char out[80];
        snprintf(out, sizeof out, "later: %s", job->request);
        st = meridian_deferred_finish(job->d, MERIDIAN_OK, (const uint8_t *)out, strlen(out), NULL);
    }
    job->finish_status = st;
    atomic_fetch_add(&jobs_done, 1);
    return NULL;
}

/* raw: defers, starts a detached thread to answer, returns at once. */
static atomic_int handlers_returned;
static uint32_t h_deferred(void *user, const meridian_request *req, meridian_reply *reply) {
    (void)user;
    const uint8_t *data;
    size_t len;
    struct deferred_job *job = calloc(1, sizeof *job);
    if (meridian_request_body(req, &data, &len) != MERIDIAN_OK) {
        free(job);
        return MERIDIAN_INTERNAL;
    }
    snprintf(job->request, sizeof job->request, "%.*s", (int)len, (const char *)data);
    if (meridian_reply_defer(reply, &job->d) != MERIDIAN_OK) {
        free(job);
        return MERIDIAN_INTERNAL;
    }
    /* Deferring twice is refused. */
    meridian_deferred_reply *again = NULL;
    if (meridian_reply_defer(reply, &again) != MERIDIAN_INVALID_STATE) return MERIDIAN_INTERNAL;
    last_job = job;
    int n = atomic_fetch_add(&jobs_made, 1);
    if (n < 64) all_jobs[n] = job;
    pthread_t t;
    pthread_create(&t, NULL, deferred_worker, job);
    pthread_detach(t);
    atomic_fetch_add(&handlers_returned, 1);
    return MERIDIAN_OK; /* ignored: the worker answers */
}

/* raw streaming: a streaming handler cannot defer. */
static uint32_t h_stream_defer(void *user, const meridian_request *req, meridian_reply *reply) {
    (void)user;
    (void)req;
    meridian_deferred_reply *d = NULL;
    meridian_status st = meridian_reply_defer(reply, &d);
    const char *name = meridian_status_name(st);
    return meridian_reply_send(reply, (const uint8_t *)name, strlen(name));
}

/* raw client-streaming: messages are decimal numbers; answers their sum. */
static uint32_t h_sum(void *user, const meridian_request *req, meridian_reply *reply) {
    (void)user;
    const uint8_t *data;
    size_t len;
    long long total = 0;
    meridian_status st;
    while ((st = meridian_request_next(req, &data, &len)) == MERIDIAN_OK) total += atoll((const char *)data);
    if (st != MERIDIAN_STREAM_END) return st;
    /* Sticky end. */
    if (meridian_request_next(req, &data, &len) != MERIDIAN_STREAM_END) return MERIDIAN_INTERNAL;
    char out[32];
    snprintf(out, sizeof out, "%lld", total);
    return meridian_reply_set_body(reply, (const uint8_t *)out, strlen(out));
}

/* JSON client-streaming: messages are {"n": N}; answers {"count": C, "total": T}. */
static uint32_t h_sum_json(void *user, const meridian_request *req, meridian_reply *reply) {
    (void)user;
    const uint8_t *data;
    size_t len;
    long long total = 0, count = 0, n = 0;
    meridian_status st;
    while ((st = meridian_request_next(req, &data, &len)) == MERIDIAN_OK) {
        if (sscanf((const char *)data, "{\"n\":%lld}", &n) != 1) return MERIDIAN_INVALID_ARGUMENT;
        total += n;
        count++;
    }
    if (st != MERIDIAN_STREAM_END) return st;
    char out[64];
    snprintf(out, sizeof out, "{\"count\":%lld,\"total\":%lld}", count, total);
    return meridian_reply_set_body(reply, (const uint8_t *)out, strlen(out));
}

/* raw client-streaming: reads one message and answers "first <message>", or with `user`
   set refuses the call; the other messages are never read. */
static uint32_t h_answer_first(void *user, const meridian_request *req, meridian_reply *reply) {
    const uint8_t *data;
    size_t len;
    meridian_status st = meridian_request_next(req, &data, &len);
    if (st != MERIDIAN_OK) return st;
    if (user != NULL) {
        meridian_reply_set_error_message(reply, "one is enough");
        return MERIDIAN_FAILED_PRECONDITION;
    }
    char out[64];
    snprintf(out, sizeof out, "first %.*s", (int)(len < 32 ? len : 32), (const char *)data);
    return meridian_reply_set_body(reply, (const uint8_t *)out, strlen(out));
}

/* raw bidi: answers each number doubled, as it arrives; records how its input ended. */
static _Atomic meridian_status bidi_end;
static atomic_int bidi_ended;
static uint32_t h_double(void *user, const meridian_request *req, meridian_reply *reply) {
    (void)user;
    const uint8_t *data;
    size_t len;
    meridian_status st;
    while ((st = meridian_request_next(req, &data, &len)) == MERIDIAN_OK) {
        char out[32];
        snprintf(out, sizeof out, "%lld", 2 * atoll((const char *)data));
        meridian_status sent = meridian_reply_send(reply, (const uint8_t *)out, strlen(out));
        if (sent != MERIDIAN_OK) {
            st = sent;
            break;
        }
    }
    atomic_store(&bidi_end, st);
    atomic_fetch_add(&bidi_ended, 1);
    return st == MERIDIAN_STREAM_END ? MERIDIAN_OK : st;
}

/* raw unary: meridian_request_next is for streamed requests only. */
static uint32_t h_next_in_unary(void *user, const meridian_request *req, meridian_reply *reply) {
    (void)user;
    const uint8_t *data;
    size_t len;
    const char *name = meridian_status_name(meridian_request_next(req, &data, &len));
    return meridian_reply_set_body(reply, (const uint8_t *)name, strlen(name));
}

static void test_client_streaming(meridian_client *c) {
    meridian_call *call = NULL;
    const uint8_t *data;
    size_t len;
    MUST(meridian_client_open_call(c, "sum", MERIDIAN_CALL_CLIENT_STREAMING, MERIDIAN_PAYLOAD_RAW,
                                   NULL, &call));
    for (int i = 1; i <= 100; i++) {
        char msg[16];
        snprintf(msg, sizeof msg, "%d", i);
        EXPECT_STATUS(meridian_call_send(call, (const uint8_t *)msg, strlen(msg)), MERIDIAN_OK);
    }
    MUST(meridian_call_close_send(call));
    MUST(meridian_call_close_send(call)); /* harmless twice */
    EXPECT_STATUS(meridian_call_send(call, (const uint8_t *)"1", 1), MERIDIAN_INVALID_STATE);
    EXPECT_STATUS(meridian_call_next(call, &data, &len), MERIDIAN_OK);
    EXPECT(len == 4 && strcmp((const char *)data, "5050") == 0);
    EXPECT_STATUS(meridian_call_next(call, &data, &len), MERIDIAN_STREAM_END);
    EXPECT_STATUS(meridian_call_next(call, &data, &len), MERIDIAN_STREAM_END);
    meridian_call_free(call);

    /* JSON, and no message at all. */
    call = NULL;
    MUST(meridian_client_open_call(c, "sum_json", MERIDIAN_CALL_CLIENT_STREAMING,
                                   MERIDIAN_PAYLOAD_JSON, NULL, &call));
    EXPECT_STATUS(meridian_call_send(call, (const uint8_t *)"{\"n\": 40}", 9), MERIDIAN_OK);
    EXPECT_STATUS(meridian_call_send(call, (const uint8_t *)"{\"n\": 2}", 8), MERIDIAN_OK);
    EXPECT_STATUS(meridian_call_send(call, (const uint8_t *)"{oops", 5), MERIDIAN_BAD_JSON);
    MUST(meridian_call_close_send(call));
    EXPECT_STATUS(meridian_call_next(call, &data, &len), MERIDIAN_OK);
    EXPECT(strcmp((const char *)data, "{\"count\":2,\"total\":42}") == 0);
    meridian_call_free(call);
    call = NULL;
    MUST(meridian_client_open_call(c, "sum", MERIDIAN_CALL_CLIENT_STREAMING, 0, NULL, &call));
    MUST(meridian_call_close_send(call));
    EXPECT_STATUS(meridian_call_next(call, &data, &len), MERIDIAN_OK);
    EXPECT(strcmp((const char *)data, "0") == 0);
    meridian_call_free(call);

    /* The server answers after the first message: later sends are discarded, not errors
       (the server's STOP_SENDING arrives while they go on), and the call's outcome is the
       server's answer, success or failure. */
    for (int refuse = 0; refuse < 2; refuse++) {
        call = NULL;
        MUST(meridian_client_open_call(c, refuse ? "refuse_first" : "first_only",
                                       MERIDIAN_CALL_CLIENT_STREAMING, 0, NULL, &call));
        EXPECT_STATUS(meridian_call_send(call, (const uint8_t *)"7", 1), MERIDIAN_OK);
        if (refuse) {
            EXPECT_STATUS(meridian_call_next(call, &data, &len), MERIDIAN_FAILED_PRECONDITION);
            EXPECT(strstr(last_error(), "one is enough") != NULL);
        } else {
            EXPECT_STATUS(meridian_call_next(call, &data, &len), MERIDIAN_OK);
            EXPECT(strcmp((const char *)data, "first 7") == 0);
        }
        for (int i = 0; i < 50; i++) {
            EXPECT_STATUS(meridian_call_send(call, (const uint8_t *)"8", 1), MERIDIAN_OK);
            sleep_ms(2);
        }
        MUST(meridian_call_close_send(call));
        EXPECT_STATUS(meridian_call_next(call, &data, &len),
                      refuse ? MERIDIAN_FAILED_PRECONDITION : MERIDIAN_STREAM_END);
        meridian_call_free(call);
    }

    /* Errors: unknown method, bad kind, NULLs. */
    call = NULL;
    meridian_status st =
        meridian_client_open_call(c, "nope", MERIDIAN_CALL_CLIENT_STREAMING, 0, NULL, &call);
    if (st == MERIDIAN_OK) {
        meridian_call_close_send(call);
        EXPECT_STATUS(meridian_call_next(call, &data, &len), MERIDIAN_UNIMPLEMENTED);
        meridian_call_free(call);
    } else {
        EXPECT(st == MERIDIAN_UNIMPLEMENTED);
    }
    call = NULL;
    EXPECT_STATUS(meridian_client_open_call(c, "sum", 7, 0, NULL, &call), MERIDIAN_INVALID_PARAMETER);
    EXPECT(call == NULL);
    EXPECT_STATUS(meridian_call_send(NULL, NULL, 0), MERIDIAN_NULL_PARAMETER);
    EXPECT_STATUS(meridian_call_next(NULL, &data, &len), MERIDIAN_NULL_PARAMETER);
    meridian_call_free(NULL);
    EXPECT_BODY(call_ok(c, "next_in_unary", 0, "", NULL), "INVALID_STATE");
}

static void test_bidi(meridian_client *c) {
    meridian_call *call = NULL;
    const uint8_t *data;
    size_t len;
    /* Interleaved: each answer arrives before the next request is sent. */
    atomic_store(&bidi_ended, 0);
    MUST(meridian_client_open_call(c, "double", MERIDIAN_CALL_BIDI, MERIDIAN_PAYLOAD_RAW, NULL,
                                   &call));
    for (int i = 0; i < 20; i++) {
        char msg[16], want[16];
        snprintf(msg, sizeof msg, "%d", i);
        snprintf(want, sizeof want, "%d", 2 * i);
        EXPECT_STATUS(meridian_call_send(call, (const uint8_t *)msg, strlen(msg)), MERIDIAN_OK);
        EXPECT_STATUS(meridian_call_next(call, &data, &len), MERIDIAN_OK);
        EXPECT(len == strlen(want) && memcmp(data, want, len) == 0);
    }
    MUST(meridian_call_close_send(call));
    EXPECT_STATUS(meridian_call_next(call, &data, &len), MERIDIAN_STREAM_END);
    EXPECT_STATUS(meridian_call_next(call, &data, &len), MERIDIAN_STREAM_END);
    meridian_call_free(call);
    for (int i = 0; i < 300 && atomic_load(&bidi_ended) == 0; i++) sleep_ms(10);
    EXPECT(atomic_load(&bidi_end) == MERIDIAN_STREAM_END);

    /* Freeing an open call cancels it: the handler's wait for the next request ends. */
    atomic_store(&bidi_ended, 0);
    call = NULL;
    MUST(meridian_client_open_call(c, "double", MERIDIAN_CALL_BIDI, 0, NULL, &call));
    EXPECT_STATUS(meridian_call_send(call, (const uint8_t *)"21", 2), MERIDIAN_OK);
    EXPECT_STATUS(meridian_call_next(call, &data, &len), MERIDIAN_OK);
    EXPECT(len == 2 && memcmp(data, "42", 2) == 0);
    meridian_call_free(call);
    for (int i = 0; i < 500 && atomic_load(&bidi_ended) == 0; i++) sleep_ms(10);
    EXPECT(atomic_load(&bidi_ended) == 1);
    EXPECT(atomic_load(&bidi_end) == MERIDIAN_CANCELLED);

    /* A deadline over the whole call: the wait ends with DEADLINE_EXCEEDED, sticky. */
    meridian_call_options *o = NULL;
    MUST(meridian_call_options_new(&o));
    MUST(meridian_call_options_set_timeout_ms(o, 200));
    call = NULL;
    MUST(meridian_client_open_call(c, "double", MERIDIAN_CALL_BIDI, 0, o, &call));
    meridian_call_options_free(o);
    double t0 = now_s();
    EXPECT_STATUS(meridian_call_next(call, &data, &len), MERIDIAN_DEADLINE_EXCEEDED);
    EXPECT(now_s() - t0 < 2.0);
    EXPECT_STATUS(meridian_call_next(call, &data, &len), MERIDIAN_DEADLINE_EXCEEDED);
    meridian_call_free(call);
}

static void test_unary_ex(meridian_client *c) {
    meridian_response *resp = NULL;
    const uint8_t *data;
    size_t len;
    /* Failure: status, message and trailers are all reachable. */
    EXPECT_STATUS(meridian_client_unary_ex(c, "fail_trailers", 0, NULL, 0, NULL, &resp),
                  MERIDIAN_NOT_FOUND);
    EXPECT(resp != NULL);
    if (resp) {
        EXPECT(meridian_response_status(resp) == MERIDIAN_NOT_FOUND);
        MUST(meridian_response_error_message(resp, &data, &len));
        EXPECT(len == 12 && strcmp((const char *)data, "no such user") == 0);
        MUST(meridian_response_metadata_get(resp, "retry-after-ms", &data, &len));
        EXPECT(len == 3 && memcmp(data, "250", 3) == 0);
        MUST(meridian_response_metadata_get(resp, "x-bin", &data, &len));
        EXPECT(len == 3 && memcmp(data, "a\0b", 3) == 0);
        MUST(meridian_response_body(resp, &data, &len));
        EXPECT(len == 0);
        meridian_response_free(resp);
    }
    EXPECT(strstr(last_error(), "no such user") != NULL);
    /* Success: as meridian_client_unary, with status OK and no message. */
    resp = NULL;
    EXPECT_STATUS(meridian_client_unary_ex(c, "echo", 0, (const uint8_t *)"hey", 3, NULL, &resp),
                  MERIDIAN_OK);
    if (resp) {
        EXPECT(meridian_response_status(resp) == MERIDIAN_OK);
        MUST(meridian_response_body(resp, &data, &len));
        EXPECT(len == 3 && memcmp(data, "hey", 3) == 0);
        MUST(meridian_response_error_message(resp, &data, &len));
        EXPECT(len == 0);
        meridian_response_free(resp);
    }
    /* An interface error makes no call and writes nothing. */
    resp = NULL;
    EXPECT_STATUS(meridian_client_unary_ex(c, "add", MERIDIAN_PAYLOAD_JSON, (const uint8_t *)"[1,",
                                           3, NULL, &resp),
                  MERIDIAN_BAD_JSON);
    EXPECT(resp == NULL);
    EXPECT(meridian_response_status(NULL) == MERIDIAN_NULL_PARAMETER);
    /* The unknown-method status comes with a response too. */
    EXPECT_STATUS(meridian_client_unary_ex(c, "nope", 0, NULL, 0, NULL, &resp),
                  MERIDIAN_UNIMPLEMENTED);
    EXPECT(resp != NULL && meridian_response_status(resp) == MERIDIAN_UNIMPLEMENTED);
    meridian_response_free(resp);
}

struct async_result {
    pthread_mutex_t lock;
    pthread_cond_t cv;
    int calls;
    meridian_status status;
    char body[64];
    char trailer[64];
    char error[128];
    double at;
};

static void on_done(void *user, meridian_status status, meridian_response *resp,
                    const char *error) {
    struct async_result *r = user;
    pthread_mutex_lock(&r->lock);
    r->calls++;
    r->status = status;
    r->at = now_s();
    if (resp != NULL) {
        const uint8_t *data;
        size_t len;
        if (meridian_response_body(resp, &data, &len) == MERIDIAN_OK && len < sizeof r->body) {
            memcpy(r->body, data, len);
            r->body[len] = 0;
        }
        if (meridian_response_metadata_get(resp, "retry-after-ms", &data, &len) == MERIDIAN_OK &&
            len < sizeof r->trailer) {
            memcpy(r->trailer, data, len);
            r->trailer[len] = 0;
        }
        meridian_response_free(resp);
    }
    if (error != NULL) snprintf(r->error, sizeof r->error, "%s", error);
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->lock);
}

/* Waits up to `seconds` for the callback; returns whether it came. */
static int wait_done(struct async_result *r, double seconds) {
    double until = now_s() + seconds;
    pthread_mutex_lock(&r->lock);
    while (r->calls == 0 && now_s() < until) {
        pthread_mutex_unlock(&r->lock);
        sleep_ms(5);
        pthread_mutex_lock(&r->lock);
    }
    int done = r->calls;
    pthread_mutex_unlock(&r->lock);
    return done;
}

#define ASYNC_RESULT_INIT {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, "", "", "", 0}

static void test_cancel_async(meridian_client *c) {
    /* Cancel a slow call: the callback comes at once with CANCELLED; the handler sees it. */
    struct async_result r = ASYNC_RESULT_INIT;
    meridian_pending_call *p = NULL;
    atomic_store(&slow_cancelled, 0);
    MUST(meridian_client_unary_start(c, "slow_watch", 0, NULL, 0, NULL, on_done, &r, &p));
    sleep_ms(100); /* the handler is running */
    double t0 = now_s();
    MUST(meridian_pending_call_cancel(p));
    EXPECT(wait_done(&r, 3.0) == 1);
    EXPECT(r.status == MERIDIAN_CANCELLED);
    /* Long before the handler's 5 s were up (with room for valgrind's slowness). */
    EXPECT(r.at - t0 < 2.5);
    EXPECT(strstr(r.error, "cancelled") != NULL);
    for (int i = 0; i < 300 && atomic_load(&slow_cancelled) == 0; i++) sleep_ms(10);
    EXPECT(atomic_load(&slow_cancelled) == 1);
    /* Cancelling again, after the callback, does nothing; the callback ran once. */
    MUST(meridian_pending_call_cancel(p));
    sleep_ms(50);
    EXPECT(r.calls == 1);
    meridian_pending_call_free(p);

    /* A call that completes: cancel afterwards is harmless; the handle may be freed first. */
    struct async_result ok = ASYNC_RESULT_INIT;
    p = NULL;
    MUST(meridian_client_unary_start(c, "echo", 0, (const uint8_t *)"fine", 4, NULL, on_done, &ok,
                                     &p));
    EXPECT(wait_done(&ok, 5.0) == 1);
    EXPECT(ok.status == MERIDIAN_OK && strcmp(ok.body, "fine") == 0);
    MUST(meridian_pending_call_cancel(p));
    meridian_pending_call_free(p);
    sleep_ms(20);
    EXPECT(ok.calls == 1);

    /* A failed call's response reaches the callback, with its trailers. */
    struct async_result bad = ASYNC_RESULT_INIT;
    p = NULL;
    MUST(meridian_client_unary_start(c, "fail_trailers", 0, NULL, 0, NULL, on_done, &bad, &p));
    meridian_pending_call_free(p); /* freeing does not cancel */
    EXPECT(wait_done(&bad, 5.0) == 1);
    EXPECT(bad.status == MERIDIAN_NOT_FOUND);
    EXPECT(strcmp(bad.trailer, "250") == 0);
    EXPECT(strcmp(bad.error, "no such user") == 0);

    EXPECT_STATUS(meridian_client_unary_start(c, "echo", 0, NULL, 0, NULL, on_done, NULL, NULL),
                  MERIDIAN_NULL_PARAMETER);
    EXPECT_STATUS(meridian_pending_call_cancel(NULL), MERIDIAN_NULL_PARAMETER);
    meridian_pending_call_free(NULL);
}

static void test_deferred(meridian_client *c) {
    meridian_response *resp = NULL;
    const uint8_t *data;
    size_t len;
    /* Answered later from another thread. */
    double t0 = now_s();
    EXPECT_BODY(call_ok(c, "deferred", 0, "one", NULL), "later: one");
    EXPECT(now_s() - t0 >= 0.09);
    /* Many at once: every handler returned at once and the answers came from workers. */
    struct async_result rs[8];
    for (int i = 0; i < 8; i++) {
        struct async_result init = ASYNC_RESULT_INIT;
        rs[i] = init;
        char req[16];
        snprintf(req, sizeof req, "n%d", i);
        meridian_pending_call *p = NULL;
        MUST(meridian_client_unary_start(c, "deferred", 0, (const uint8_t *)req, strlen(req), NULL,
                                         on_done, &rs[i], &p));
        meridian_pending_call_free(p);
    }
    for (int i = 0; i < 8; i++) {
        char want[32];
        snprintf(want, sizeof want, "later: n%d", i);
        EXPECT(wait_done(&rs[i], 10.0) == 1);
        EXPECT(rs[i].status == MERIDIAN_OK && strcmp(rs[i].body, want) == 0);
    }
    /* An error with a trailer, answered later. */
    EXPECT_STATUS(meridian_client_unary_ex(c, "deferred", 0, (const uint8_t *)"fail", 4, NULL,
                                           &resp),
                  MERIDIAN_PERMISSION_DENIED);
    if (resp) {
        MUST(meridian_response_error_message(resp, &data, &len));
        EXPECT(strcmp((const char *)data, "not you") == 0);
        MUST(meridian_response_metadata_get(resp, "why", &data, &len));
        EXPECT(len == 5 && memcmp(data, "later", 5) == 0);
        meridian_response_free(resp);
    }
    /* Freed without an answer: a clear status soon after, not a hang. */
    resp = NULL;
    t0 = now_s();
    EXPECT_STATUS(meridian_client_unary(c, "deferred", 0, (const uint8_t *)"drop", 4, NULL, &resp),
                  MERIDIAN_INTERNAL);
    EXPECT(strstr(last_error(), "without answering") != NULL);
    EXPECT(now_s() - t0 < 2.0);
    EXPECT(resp == NULL);
    /* Answered after the caller's deadline: the caller got DEADLINE_EXCEEDED, the late
       answer gets MERIDIAN_CANCELLED. */
    meridian_call_options *o = NULL;
    MUST(meridian_call_options_new(&o));
    MUST(meridian_call_options_set_timeout_ms(o, 100));
    int before = atomic_load(&jobs_done);
    EXPECT_STATUS(meridian_client_unary(c, "deferred", 0, (const uint8_t *)"too-late", 8, o, &resp),
                  MERIDIAN_DEADLINE_EXCEEDED);
    meridian_call_options_free(o);
    /* Read once the job is done, not when the call returned: under valgrind the call can
       reach its deadline before the server's handler has even started the job, and
       last_job would still be the previous one. (The handler sets last_job before it
       starts the worker whose jobs_done increment is awaited here.) */
    for (int i = 0; i < 2500 && atomic_load(&jobs_done) == before; i++) sleep_ms(10);
    EXPECT(atomic_load(&jobs_done) == before + 1);
    struct deferred_job *job = last_job;
    EXPECT(job->saw_over);
    EXPECT(job->finish_status == MERIDIAN_CANCELLED);
    /* A streaming handler cannot defer. */
    meridian_stream *s = NULL;
    MUST(meridian_client_server_streaming(c, "stream_defer", 0, NULL, 0, NULL, &s));
    EXPECT_STATUS(meridian_stream_next(s, &data, &len), MERIDIAN_OK);
    EXPECT(len == strlen("INVALID_STATE") && memcmp(data, "INVALID_STATE", len) == 0);
    meridian_stream_free(s);
    EXPECT_STATUS(meridian_deferred_finish(NULL, MERIDIAN_OK, NULL, 0, NULL),
                  MERIDIAN_NULL_PARAMETER);
    meridian_deferred_free(NULL);
}

int main(void) {
    char dir[] = "/tmp/meridian-c-calls-XXXXXX";
    if (mkdtemp(dir) == NULL) return 2;
    MUST(meridian_dev_certificates_write(dir));
    snprintf(ca_path, sizeof ca_path, "%s/ca.pem", dir);
    snprintf(cert_path, sizeof cert_path, "%s/server.pem", dir);
    snprintf(key_path, sizeof key_path, "%s/server.key", dir);

    meridian_server *server = NULL;
    uint16_t port = 0;
    MUST(meridian_server_new("calls", &server));
    MUST(register_handlers(server));
    MUST(meridian_server_add_unary(server, "fail_trailers", 0, true, h_fail_trailers, NULL));
    MUST(meridian_server_add_unary(server, "slow_watch", 0, false, h_slow_watch, NULL));
    MUST(meridian_server_add_unary(server, "deferred", 0, false, h_deferred, NULL));
    MUST(meridian_server_add_server_streaming(server, "stream_defer", 0, false, h_stream_defer,
                                              NULL));
    MUST(meridian_server_add_client_streaming(server, "sum", 0, false, h_sum, NULL));
    MUST(meridian_server_add_client_streaming(server, "sum_json", MERIDIAN_PAYLOAD_JSON, false,
                                              h_sum_json, NULL));
    MUST(meridian_server_add_bidi(server, "double", 0, false, h_double, NULL));
    static int refuse = 1;
    MUST(meridian_server_add_client_streaming(server, "first_only", 0, false, h_answer_first,
                                              NULL));
    MUST(meridian_server_add_client_streaming(server, "refuse_first", 0, false, h_answer_first,
                                              &refuse));
    MUST(meridian_server_add_unary(server, "next_in_unary", 0, false, h_next_in_unary, NULL));
    MUST(meridian_server_start(server, "127.0.0.1:0", cert_path, key_path));
    MUST(meridian_server_port(server, &port));
    meridian_client *client = connect_client(port, ca_path);

    test_unary_ex(client);
    test_cancel_async(client);
    test_deferred(client);
    test_client_streaming(client);
    test_bidi(client);

    meridian_client_free(client);
    meridian_server_free(server);
    for (int i = 0; i < 500 && atomic_load(&jobs_done) < atomic_load(&jobs_made); i++) sleep_ms(10);
    EXPECT(atomic_load(&jobs_done) == atomic_load(&jobs_made));
    for (int i = 0; i < atomic_load(&jobs_made) && i < 64; i++) free(all_jobs[i]);
    unlink(ca_path);
    unlink(cert_path);
    unlink(key_path);
    rmdir(dir);
    if (failures) {
        fprintf(stderr, "test_calls: %d check(s) failed\n", failures);
        return 1;
    }
    printf("test_calls: all checks passed\n");
    return 0;
}
