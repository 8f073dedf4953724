// A small RAII wrapper over meridian.h for C++17: handles freed by destructors, failures
// thrown as meridian::Error (with the status and the library's error text).
#pragma once

#include <chrono>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>

#include "meridian.h"

namespace meridian {

class Error : public std::runtime_error {
  public:
    Error(meridian_status status, const std::string &what)
        : std::runtime_error(std::string(meridian_status_name(status)) + ": " + what),
          status_(status) {}
    meridian_status status() const { return status_; }

  private:
    meridian_status status_;
};

namespace detail {
inline void check(meridian_status st) {
    if (st == MERIDIAN_OK) return;
    char text[512];
    size_t n = 0;
    meridian_last_error(text, sizeof text, &n);
    throw Error(st, std::string(text, n));
}
template <typename T, void (*Free)(T *)>
struct Deleter {
    void operator()(T *p) const { Free(p); }
};
template <typename T, void (*Free)(T *)>
using Owned = std::unique_ptr<T, Deleter<T, Free>>;
}  // namespace detail

/// The result of a call: body, trailers, timing. Owns a meridian_response.
class Response {
  public:
    explicit Response(meridian_response *r) : r_(r) {}
    std::string_view body() const {
        const uint8_t *data;
        size_t len;
        detail::check(meridian_response_body(r_.get(), &data, &len));
        return {reinterpret_cast<const char *>(data), len};
    }
    std::chrono::microseconds total_time() const {
        uint64_t us = 0;
        detail::check(meridian_response_total_time_us(r_.get(), &us));
        return std::chrono::microseconds(us);
    }

  private:
    detail::Owned<meridian_response, meridian_response_free> r_;
};

/// Per-call options. Owns a meridian_call_options.
class CallOptions {
  public:
    CallOptions() {
        meridian_call_options *o = nullptr;
        detail::check(meridian_call_options_new(&o));
        o_.reset(o);
    }
    CallOptions &timeout(std::chrono::milliseconds t) {
        detail::check(meridian_call_options_set_timeout_ms(o_.get(), static_cast<uint64_t>(t.count())));
        return *this;
    }
    CallOptions &metadata(const std::string &key, std::string_view value) {
        detail::check(meridian_call_options_add_metadata(
            o_.get(), key.c_str(), reinterpret_cast<const uint8_t *>(value.data()), value.size()));
        return *this;
    }
    const meridian_call_options *get() const { return o_.get(); }

  private:
    detail::Owned<meridian_call_options, meridian_call_options_free> o_;
};

/// A client of one server. Thread-safe, movable, not copyable. Owns a meridian_client.
class Client {
  public:
    Client(const std::string &addr, const std::string &ca_pem_path) {
        meridian_client_config *c = nullptr;
        detail::check(meridian_client_config_new(&c));
        detail::Owned<meridian_client_config, meridian_client_config_free> config(c);
        detail::check(meridian_client_config_add_endpoint(c, nullptr, addr.c_str(), "localhost"));
        detail::check(meridian_client_config_set_roots_pem_file(c, ca_pem_path.c_str()));
        meridian_client *client = nullptr;
        detail::check(meridian_client_new(c, &client));
        client_.reset(client);
    }
    Response call_json(const std::string &method, std::string_view json,
                       const CallOptions *options = nullptr) const {
        return call(method, MERIDIAN_PAYLOAD_JSON, json, options);
    }
    Response call_raw(const std::string &method, std::string_view bytes,
                      const CallOptions *options = nullptr) const {
        return call(method, MERIDIAN_PAYLOAD_RAW, bytes, options);
    }

  private:
    Response call(const std::string &method, uint32_t payload, std::string_view request,
                  const CallOptions *options) const {
        meridian_response *r = nullptr;
        detail::check(meridian_client_unary(client_.get(), method.c_str(), payload,
                                            reinterpret_cast<const uint8_t *>(request.data()),
                                            request.size(), options ? options->get() : nullptr, &r));
        return Response(r);
    }
    detail::Owned<meridian_client, meridian_client_free> client_;
};

}  // namespace meridian
