// meridian.hpp: a header-only C++17 wrapper over meridian.h (libmeridian).
//
// - Every handle is owned by an RAII object (move-only) and freed by its destructor.
// - A failing library call throws meridian::Error, which carries the status, its gRPC code
//   and the library's error text.
// - Servers take handlers as std::function. A handler answers by returning the response
//   body, or fails the call by throwing meridian::Error with a gRPC status
//   (MERIDIAN_NOT_FOUND, ...). Any other exception fails the call with UNKNOWN and the
//   exception's what() as its message; no exception ever crosses into the library.
// - A failed unary call throws meridian::Error carrying the server's message and the
//   trailing metadata it sent (Error::trailer).
// - Thread-safety is the C library's: a Client may be shared by threads, a Server is
//   configured and stopped from one thread, handlers run concurrently on library threads.
//
// Installed beside meridian.h by scripts/install_c.sh; link with -lmeridian (pkg-config
// meridian, or CMake's Meridian::meridian).
#pragma once

#if __cplusplus < 201703L && !(defined(_MSVC_LANG) && _MSVC_LANG >= 201703L)
#error "meridian.hpp needs C++17 (std::string_view, std::optional)"
#endif

#include <chrono>
#include <cstdint>
#include <exception>
#include <functional>
#include <list>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

#include "meridian.h"

namespace meridian {

/// A failed library call or a failed RPC: the status, its name and the library's text,
/// and for a failed unary call the trailing metadata the server sent with the failure.
class Error : public std::runtime_error {
  public:
    Error(meridian_status status, const std::string &message,
          std::shared_ptr<const meridian_response> failed = nullptr)
        : std::runtime_error(std::string(meridian_status_name(static_cast<uint32_t>(status))) + ": " +
                             message),
          status_(status),
          message_(message),
          failed_(std::move(failed)) {}
    /// The library status (MERIDIAN_NOT_FOUND, MERIDIAN_UNAVAILABLE, ...).
    meridian_status status() const noexcept { return status_; }
    /// The gRPC code (0..16) of an RPC status, or -1 for the library's own codes.
    int grpc_code() const noexcept { return meridian_status_grpc_code(static_cast<uint32_t>(status_)); }
    /// The error text without the status name.
    const std::string &message() const noexcept { return message_; }
    /// A trailing metadata value the server sent with a failed unary call, or nothing.
    std::optional<std::string> trailer(const std::string &key) const {
        if (!failed_) return std::nullopt;
        const uint8_t *data = nullptr;
        size_t len = 0;
        if (meridian_response_metadata_get(failed_.get(), key.c_str(), &data, &len) != MERIDIAN_OK)
            return std::nullopt;
        return std::string(reinterpret_cast<const char *>(data), len);
    }

  private:
    meridian_status status_;
    std::string message_;
    std::shared_ptr<const meridian_response> failed_;
};

/// The library version loaded at run time ("meridian 0.1.0").
inline std::string_view version() { return meridian_version(); }

namespace detail {
inline std::string last_error() {
    char text[8192];
    size_t n = 0;
    if (meridian_last_error(text, sizeof text, &n) != MERIDIAN_OK) return {};
    return std::string(text, n);
}
inline void check(meridian_status st) {
    if (st != MERIDIAN_OK) throw Error(st, last_error());
}
inline const uint8_t *bytes(std::string_view s) { return reinterpret_cast<const uint8_t *>(s.data()); }
inline std::string_view view(const uint8_t *data, size_t len) {
    return {reinterpret_cast<const char *>(data), len};
}
// Milliseconds for the C interface, clamped to [0, the type's maximum].
template <typename U>
inline U millis(std::chrono::milliseconds t) {
    auto n = t.count();
    if (n <= 0) return 0;
    if (static_cast<unsigned long long>(n) > static_cast<unsigned long long>(static_cast<U>(-1))) return static_cast<U>(-1);
    return static_cast<U>(n);
}
template <typename T, void (*Free)(T *)>
struct Deleter {
    void operator()(T *p) const noexcept { Free(p); }
};
template <typename T, void (*Free)(T *)>
using Owned = std::unique_ptr<T, Deleter<T, Free>>;
}  // namespace detail

/// The payload kind of a call or a method.
enum class Payload : uint32_t {
    Raw = MERIDIAN_PAYLOAD_RAW,   ///< bytes, untouched
    Json = MERIDIAN_PAYLOAD_JSON, ///< JSON text, converted to and from Meridian's values
};

/// The result of a successful unary call: body, trailing metadata, timing.
class Response {
  public:
    explicit Response(meridian_response *r) : r_(r) {}
    /// The response body (JSON text for a JSON call). Valid while this object lives.
    std::string_view body() const {
        const uint8_t *data = nullptr;
        size_t len = 0;
        detail::check(meridian_response_body(r_.get(), &data, &len));
        return detail::view(data, len);
    }
    /// A trailing metadata value the server set, or nothing if absent.
    std::optional<std::string_view> metadata(const std::string &key) const {
        const uint8_t *data = nullptr;
        size_t len = 0;
        meridian_status st = meridian_response_metadata_get(r_.get(), key.c_str(), &data, &len);
        if (st == MERIDIAN_NOT_PRESENT) return std::nullopt;
        detail::check(st);
        return detail::view(data, len);
    }
    /// Time from sending the request to the whole response.
    std::chrono::microseconds total_time() const {
        uint64_t us = 0;
        detail::check(meridian_response_total_time_us(r_.get(), &us));
        return std::chrono::microseconds(us);
    }
    /// Time the server reported spending on the call, if it did.
    std::optional<std::chrono::microseconds> server_time() const {
        uint64_t us = 0;
        meridian_status st = meridian_response_server_time_us(r_.get(), &us);
        if (st == MERIDIAN_NOT_PRESENT) return std::nullopt;
        detail::check(st);
        return std::chrono::microseconds(us);
    }

  private:
    detail::Owned<meridian_response, meridian_response_free> r_;
};

/// Per-call options: deadline, metadata, idempotency, routing key.
class CallOptions {
  public:
    CallOptions() {
        meridian_call_options *o = nullptr;
        detail::check(meridian_call_options_new(&o));
        o_.reset(o);
    }
    /// The call fails with DEADLINE_EXCEEDED after `t`.
    CallOptions &timeout(std::chrono::milliseconds t) {
        detail::check(meridian_call_options_set_timeout_ms(o_.get(), detail::millis<uint64_t>(t)));
        return *this;
    }
    /// Sends `key: value` with the request (lower-case keys; "-bin" keys carry bytes).
    CallOptions &metadata(const std::string &key, std::string_view value) {
        detail::check(meridian_call_options_add_metadata(o_.get(), key.c_str(), detail::bytes(value),
                                                         value.size()));
        return *this;
    }
    /// Declares the call safe to run more than once (retries, hedging, 0-RTT).
    CallOptions &idempotent(bool yes = true) {
        detail::check(meridian_call_options_set_idempotent(o_.get(), yes));
        return *this;
    }
    /// Routes the call to the region that owns `key`.
    CallOptions &routing_key(std::string_view key) {
        detail::check(meridian_call_options_set_routing_key(o_.get(), detail::bytes(key), key.size()));
        return *this;
    }
    /// Waits for a server instead of failing at once while none is reachable.
    CallOptions &wait_for_ready(bool yes = true) {
        detail::check(meridian_call_options_set_wait_for_ready(o_.get(), yes));
        return *this;
    }
    const meridian_call_options *get() const noexcept { return o_.get(); }

  private:
    detail::Owned<meridian_call_options, meridian_call_options_free> o_;
};

/// The messages of a server-streaming call, pulled one at a time.
class Stream {
  public:
    explicit Stream(meridian_stream *s) : s_(s) {}
    /// The next message (valid until the next call or the stream's end), nothing at the
    /// end of the stream; throws Error if the call failed.
    std::optional<std::string_view> next() {
        const uint8_t *data = nullptr;
        size_t len = 0;
        meridian_status st = meridian_stream_next(s_.get(), &data, &len);
        if (st == MERIDIAN_STREAM_END) return std::nullopt;
        detail::check(st);
        return detail::view(data, len);
    }

  private:
    detail::Owned<meridian_stream, meridian_stream_free> s_;
};

/// The kind of call `Client::open_call` opens.
enum class CallKind : uint32_t {
    ClientStreaming = MERIDIAN_CALL_CLIENT_STREAMING, ///< many requests, one response
    Bidi = MERIDIAN_CALL_BIDI,                       ///< messages both ways
};

/// An open client-streaming or bidirectional call. Destroying it before its end cancels it.
class Call {
  public:
    explicit Call(meridian_call *c) : c_(c) {}
    /// Sends one request message.
    void send(std::string_view message) { detail::check(meridian_call_send(c_.get(), detail::bytes(message), message.size())); }
    /// Tells the server no more requests come.
    void close_send() { detail::check(meridian_call_close_send(c_.get())); }
    /// The next response (valid until the next call), nothing once the call ended well;
    /// throws Error if it failed.
    std::optional<std::string_view> next() {
        const uint8_t *data = nullptr;
        size_t len = 0;
        meridian_status st = meridian_call_next(c_.get(), &data, &len);
        if (st == MERIDIAN_STREAM_END) return std::nullopt;
        detail::check(st);
        return detail::view(data, len);
    }

  private:
    detail::Owned<meridian_call, meridian_call_free> c_;
};

/// How a Client reaches its servers and whom it trusts.
class ClientConfig {
  public:
    ClientConfig() {
        meridian_client_config *c = nullptr;
        detail::check(meridian_client_config_new(&c));
        c_.reset(c);
    }
    /// Adds a server: "IP:port" or "host:port", the name its certificate must carry, and
    /// its region ("" for the default).
    ClientConfig &endpoint(const std::string &addr, const std::string &server_name = "localhost",
                           const std::string &region = "") {
        detail::check(meridian_client_config_add_endpoint(c_.get(), region.empty() ? nullptr : region.c_str(),
                                                          addr.c_str(), server_name.c_str()));
        return *this;
    }
    /// Reads regions and their servers from a region file (TOML).
    ClientConfig &region_file(const std::string &path) {
        detail::check(meridian_client_config_set_region_file(c_.get(), path.c_str()));
        return *this;
    }
    /// Trusts the CA certificates in a PEM file.
    ClientConfig &roots_pem_file(const std::string &path) {
        detail::check(meridian_client_config_set_roots_pem_file(c_.get(), path.c_str()));
        return *this;
    }
    /// Trusts exactly one server certificate (DER or PEM bytes).
    ClientConfig &pinned_certificate(std::string_view cert) {
        detail::check(meridian_client_config_set_pinned_certificate(c_.get(), detail::bytes(cert), cert.size()));
        return *this;
    }
    /// Presents a client certificate (mutual TLS).
    ClientConfig &identity_pem_files(const std::string &cert_path, const std::string &key_path) {
        detail::check(meridian_client_config_set_identity_pem_files(c_.get(), cert_path.c_str(), key_path.c_str()));
        return *this;
    }
    /// Prefers this region while it is healthy.
    ClientConfig &preferred_region(const std::string &region) {
        detail::check(meridian_client_config_set_preferred_region(c_.get(), region.c_str()));
        return *this;
    }
    /// Gives up a connection attempt after `t`.
    ClientConfig &connect_timeout(std::chrono::milliseconds t) {
        detail::check(meridian_client_config_set_connect_timeout_ms(c_.get(), detail::millis<uint32_t>(t)));
        return *this;
    }
    /// A region client ejects a server silent for longer than `t` (default 1 s).
    ClientConfig &silence_limit(std::chrono::milliseconds t) {
        detail::check(meridian_client_config_set_silence_limit_ms(c_.get(), detail::millis<uint32_t>(t)));
        return *this;
    }
    const meridian_client_config *get() const noexcept { return c_.get(); }

  private:
    detail::Owned<meridian_client_config, meridian_client_config_free> c_;
};

/// A client: one server, or regions of servers. Thread-safe; move-only.
class Client {
  public:
    /// Connects as `config` says (blocking while a single server is dialled).
    explicit Client(const ClientConfig &config) {
        meridian_client *client = nullptr;
        detail::check(meridian_client_new(config.get(), &client));
        client_.reset(client);
    }
    /// One server at `addr` whose certificate carries `server_name`, trusting the CAs in
    /// `ca_pem_path`.
    Client(const std::string &addr, const std::string &ca_pem_path, const std::string &server_name = "localhost")
        : Client(ClientConfig().endpoint(addr, server_name).roots_pem_file(ca_pem_path)) {}

    /// A unary call with JSON text in and out.
    Response call_json(const std::string &method, std::string_view json, const CallOptions *options = nullptr) const {
        return call(method, Payload::Json, json, options);
    }
    /// A unary call with bytes in and out.
    Response call_raw(const std::string &method, std::string_view bytes, const CallOptions *options = nullptr) const {
        return call(method, Payload::Raw, bytes, options);
    }
    /// A unary call.
    Response call(const std::string &method, Payload payload, std::string_view request,
                  const CallOptions *options = nullptr) const {
        meridian_response *r = nullptr;
        meridian_status st = meridian_client_unary_ex(client_.get(), method.c_str(), static_cast<uint32_t>(payload),
                                                      detail::bytes(request), request.size(),
                                                      options ? options->get() : nullptr, &r);
        if (st == MERIDIAN_OK) return Response(r);
        if (r == nullptr) throw Error(st, detail::last_error());
        // A failed call with a response: keep it, for its message and trailers.
        std::shared_ptr<const meridian_response> failed(r, [](const meridian_response *p) {
            meridian_response_free(const_cast<meridian_response *>(p));
        });
        const uint8_t *text = nullptr;
        size_t len = 0;
        std::string message = meridian_response_error_message(r, &text, &len) == MERIDIAN_OK
                                  ? std::string(detail::view(text, len))
                                  : detail::last_error();
        throw Error(st, message, std::move(failed));
    }
    /// Opens a client-streaming or bidirectional call.
    Call open_call(const std::string &method, CallKind kind, Payload payload,
                   const CallOptions *options = nullptr) const {
        meridian_call *c = nullptr;
        detail::check(meridian_client_open_call(client_.get(), method.c_str(), static_cast<uint32_t>(kind),
                                                static_cast<uint32_t>(payload), options ? options->get() : nullptr,
                                                &c));
        return Call(c);
    }
    /// Opens a server-streaming call.
    Stream server_streaming(const std::string &method, Payload payload, std::string_view request,
                            const CallOptions *options = nullptr) const {
        meridian_stream *s = nullptr;
        detail::check(meridian_client_server_streaming(client_.get(), method.c_str(), static_cast<uint32_t>(payload),
                                                       detail::bytes(request), request.size(),
                                                       options ? options->get() : nullptr, &s));
        return Stream(s);
    }
    /// Waits up to `timeout` until some server can take calls to `method`.
    void wait_ready(const std::string &method, std::chrono::milliseconds timeout) const {
        detail::check(meridian_client_wait_ready(client_.get(), method.c_str(), detail::millis<uint32_t>(timeout)));
    }
    /// Rereads the trust and identity files given in the config.
    void reload_tls() const { detail::check(meridian_client_reload_tls(client_.get())); }

  private:
    detail::Owned<meridian_client, meridian_client_free> client_;
};

/// The request a handler serves; valid only during the handler.
class Request {
  public:
    explicit Request(const meridian_request *r) : r_(r) {}
    /// The request body (JSON text for a JSON method).
    std::string_view body() const {
        const uint8_t *data = nullptr;
        size_t len = 0;
        detail::check(meridian_request_body(r_, &data, &len));
        return detail::view(data, len);
    }
    /// The method called.
    std::string_view method() const {
        const char *m = nullptr;
        detail::check(meridian_request_method(r_, &m));
        return m;
    }
    /// A metadata value the caller sent, or nothing if absent.
    std::optional<std::string_view> metadata(const std::string &key) const {
        const uint8_t *data = nullptr;
        size_t len = 0;
        meridian_status st = meridian_request_metadata_get(r_, key.c_str(), &data, &len);
        if (st == MERIDIAN_NOT_PRESENT) return std::nullopt;
        detail::check(st);
        return detail::view(data, len);
    }
    /// Time left before the caller's deadline, or nothing if it set none.
    std::optional<std::chrono::milliseconds> remaining() const {
        uint64_t ms = 0;
        meridian_status st = meridian_request_remaining_ms(r_, &ms);
        if (st == MERIDIAN_NOT_PRESENT) return std::nullopt;
        detail::check(st);
        return std::chrono::milliseconds(ms);
    }
    /// Whether the caller gave up (cancelled, or its deadline passed).
    bool is_cancelled() const {
        bool cancelled = false;
        detail::check(meridian_request_is_cancelled(r_, &cancelled));
        return cancelled;
    }
    /// The caller's address, "IP:port".
    std::string peer_address() const {
        char buf[64];
        size_t n = 0;
        detail::check(meridian_request_peer_address(r_, buf, sizeof buf, &n));
        return std::string(buf, n);
    }
    /// The next request message of a client-streaming or bidi call, nothing once the
    /// client closed its side; throws Error if the request stream failed.
    std::optional<std::string_view> next() const {
        const uint8_t *data = nullptr;
        size_t len = 0;
        meridian_status st = meridian_request_next(r_, &data, &len);
        if (st == MERIDIAN_STREAM_END) return std::nullopt;
        detail::check(st);
        return detail::view(data, len);
    }
    /// The raw request, for the C functions this wrapper does not cover.
    const meridian_request *get() const noexcept { return r_; }

  private:
    const meridian_request *r_;
};

/// What a handler sends back besides its return value; valid only during the handler.
class Reply {
  public:
    explicit Reply(meridian_reply *r) : r_(r) {}
    /// Sends one message of a streaming handler; throws Error(MERIDIAN_CANCELLED) once the
    /// caller is gone.
    void send(std::string_view message) { detail::check(meridian_reply_send(r_, detail::bytes(message), message.size())); }
    /// Adds trailing metadata to the response.
    void trailer(const std::string &key, std::string_view value) {
        detail::check(meridian_reply_set_trailer(r_, key.c_str(), detail::bytes(value), value.size()));
    }
    /// The raw reply, for the C functions this wrapper does not cover.
    meridian_reply *get() const noexcept { return r_; }

  private:
    meridian_reply *r_;
};

/// A unary handler: returns the response body, or throws Error to fail the call.
using UnaryHandler = std::function<std::string(const Request &, Reply &)>;
/// A server-streaming handler: sends messages with Reply::send, or throws Error.
using StreamingHandler = std::function<void(const Request &, Reply &)>;

/// A server. Register methods, then start(); the destructor stops it (no grace) and waits
/// for running handlers. Move-only.
class Server {
  public:
    /// A server announcing `region` ("" for the default region).
    explicit Server(const std::string &region = "") : handlers_(std::make_unique<std::list<Entry>>()) {
        meridian_server *s = nullptr;
        detail::check(meridian_server_new(region.empty() ? nullptr : region.c_str(), &s));
        server_.reset(s);
    }
    /// Serves `method` with a unary handler (before start()).
    Server &unary(const std::string &method, Payload payload, UnaryHandler handler, bool idempotent = false) {
        Entry &e = handlers_->emplace_back(Entry{std::move(handler), {}});
        try {
            detail::check(meridian_server_add_unary(server_.get(), method.c_str(), static_cast<uint32_t>(payload),
                                                    idempotent, &Server::call_unary, &e));
        } catch (...) {
            handlers_->pop_back();
            throw;
        }
        return *this;
    }
    /// Serves `method` with a server-streaming handler (before start()).
    Server &server_streaming(const std::string &method, Payload payload, StreamingHandler handler,
                             bool idempotent = false) {
        Entry &e = handlers_->emplace_back(Entry{{}, std::move(handler)});
        try {
            detail::check(meridian_server_add_server_streaming(server_.get(), method.c_str(),
                                                               static_cast<uint32_t>(payload), idempotent,
                                                               &Server::call_streaming, &e));
        } catch (...) {
            handlers_->pop_back();
            throw;
        }
        return *this;
    }
    /// Serves `method` with a client-streaming handler: it reads requests with
    /// Request::next and returns the one response body.
    Server &client_streaming(const std::string &method, Payload payload, UnaryHandler handler,
                             bool idempotent = false) {
        Entry &e = handlers_->emplace_back(Entry{std::move(handler), {}});
        try {
            detail::check(meridian_server_add_client_streaming(server_.get(), method.c_str(),
                                                               static_cast<uint32_t>(payload), idempotent,
                                                               &Server::call_unary, &e));
        } catch (...) {
            handlers_->pop_back();
            throw;
        }
        return *this;
    }
    /// Serves `method` with a bidirectional handler: Request::next and Reply::send, in
    /// any order.
    Server &bidi(const std::string &method, Payload payload, StreamingHandler handler, bool idempotent = false) {
        Entry &e = handlers_->emplace_back(Entry{{}, std::move(handler)});
        try {
            detail::check(meridian_server_add_bidi(server_.get(), method.c_str(), static_cast<uint32_t>(payload),
                                                   idempotent, &Server::call_streaming, &e));
        } catch (...) {
            handlers_->pop_back();
            throw;
        }
        return *this;
    }
    /// Requires client certificates from the CAs in `ca_path` (before start()).
    Server &require_client_certs(const std::string &ca_path) {
        detail::check(meridian_server_require_client_certs_pem_file(server_.get(), ca_path.c_str()));
        return *this;
    }
    /// Listens on `addr` ("IP:port", port 0 for any) with a PEM certificate and key.
    void start(const std::string &addr, const std::string &cert_path, const std::string &key_path) {
        detail::check(meridian_server_start(server_.get(), addr.c_str(), cert_path.c_str(), key_path.c_str()));
    }
    /// The UDP port it listens on.
    uint16_t port() const {
        uint16_t p = 0;
        detail::check(meridian_server_port(server_.get(), &p));
        return p;
    }
    /// Rereads the certificate, key and client CA files (rotation without a restart).
    void reload_tls() { detail::check(meridian_server_reload_tls(server_.get())); }
    /// Stops gracefully: refuses new calls, gives running ones up to `grace` to finish.
    void stop(std::chrono::milliseconds grace) {
        detail::check(meridian_server_stop(server_.get(), detail::millis<uint32_t>(grace)));
    }

  private:
    struct Entry {
        UnaryHandler unary;
        StreamingHandler streaming;
    };
    // Turns what a handler threw into a status and an error message for the caller.
    static uint32_t fail(meridian_reply *reply, meridian_status status, const char *what) noexcept {
        meridian_reply_set_error_message(reply, what);
        return static_cast<uint32_t>(status);
    }
    template <typename F>
    static uint32_t guard(meridian_reply *reply, F &&f) noexcept {
        try {
            f();
            return static_cast<uint32_t>(MERIDIAN_OK);
        } catch (const Error &e) {
            int grpc = e.grpc_code();
            // Only RPC statuses travel to the caller; the library's own codes (a failed
            // send, bad JSON) become INTERNAL with their text.
            return fail(reply, grpc > 0 ? e.status() : MERIDIAN_INTERNAL, e.message().c_str());
        } catch (const std::exception &e) {
            return fail(reply, MERIDIAN_UNKNOWN, e.what());
        } catch (...) {
            return fail(reply, MERIDIAN_UNKNOWN, "the handler threw a non-standard exception");
        }
    }
    static uint32_t call_unary(void *user, const meridian_request *request, meridian_reply *reply) {
        auto *e = static_cast<Entry *>(user);
        return guard(reply, [&] {
            Request req(request);
            Reply rep(reply);
            std::string body = e->unary(req, rep);
            detail::check(meridian_reply_set_body(reply, detail::bytes(body), body.size()));
        });
    }
    static uint32_t call_streaming(void *user, const meridian_request *request, meridian_reply *reply) {
        auto *e = static_cast<Entry *>(user);
        return guard(reply, [&] {
            Request req(request);
            Reply rep(reply);
            e->streaming(req, rep);
        });
    }
    // Declared before server_, so destroyed after it: meridian_server_free waits for
    // running handlers, which use these entries. The list keeps each entry's address.
    std::unique_ptr<std::list<Entry>> handlers_;
    detail::Owned<meridian_server, meridian_server_free> server_;
};

/// Writes a throw-away development CA (ca.pem) and a localhost certificate chain and key
/// (server.pem, server.key) into the existing directory `dir`. Never for production.
inline void write_dev_certificates(const std::string &dir) {
    detail::check(meridian_dev_certificates_write(dir.c_str()));
}

}  // namespace meridian
