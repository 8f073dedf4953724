// A C++ client through the RAII wrapper: `client_cpp PORT CA_PEM [cpp]`. Against the C
// example server (examples/c/server.c) it calls `greet` and `upper`; with the third
// argument `cpp`, against the C++ example server (examples/cpp/server.cpp), it also reads
// a trailer, a stream and a NOT_FOUND. Exits 1 on any unexpected answer.
#include <iostream>
#include <string>

#include "meridian.hpp"

static bool expect(bool ok, const std::string &what) {
    if (!ok) std::cerr << "unexpected: " << what << "\n";
    return ok;
}

int main(int argc, char **argv) {
    if (argc != 3 && argc != 4) {
        std::cerr << "usage: " << argv[0] << " PORT CA_PEM [cpp]\n";
        return 2;
    }
    const bool cpp_server = argc == 4 && std::string(argv[3]) == "cpp";
    // The header this program was built with and the library it loaded must agree (while
    // the major version is 0, on major and minor).
    if ((meridian_version_number() >> 8) != (MERIDIAN_VERSION_NUMBER >> 8)) {
        std::cerr << "built for " << MERIDIAN_VERSION_MAJOR << "." << MERIDIAN_VERSION_MINOR << ", loaded "
                  << meridian::version() << "\n";
        return 1;
    }
    try {
        meridian::ClientConfig config;
        config.endpoint(std::string("127.0.0.1:") + argv[1], "localhost")
            .roots_pem_file(argv[2])
            .connect_timeout(std::chrono::milliseconds(2000));
        meridian::Client client(config);
        meridian::CallOptions options;
        options.timeout(std::chrono::milliseconds(2000)).metadata("caller", "c++");
        auto greeting = client.call_json("greet", "\"C++\"", &options);
        std::cout << "greet(\"C++\") -> " << greeting.body() << " in " << greeting.total_time().count() << " us\n";
        if (!expect(greeting.body() == "\"Hello, C++!\"", "greet body")) return 1;
        auto upper = client.call_raw("upper", "raii");
        std::cout << "upper(raii) -> " << upper.body() << "\n";
        if (!expect(upper.body() == "RAII", "upper body")) return 1;
        try {
            client.call_raw("no_such_method", "");
            return expect(false, "no_such_method succeeded"), 1;
        } catch (const meridian::Error &e) {
            std::cout << "no_such_method -> " << e.what() << "\n";
            if (!expect(e.status() == MERIDIAN_UNIMPLEMENTED && e.grpc_code() == 12, "UNIMPLEMENTED")) return 1;
        }
        if (!cpp_server) return 0;

        auto trailer = greeting.metadata("greeted-for");
        std::cout << "greet trailer greeted-for -> " << (trailer ? *trailer : "(none)") << "\n";
        if (!expect(trailer && *trailer == "c++", "trailer greeted-for: c++")) return 1;
        if (!expect(!greeting.metadata("absent"), "no trailer 'absent'")) return 1;

        auto stream = client.server_streaming("count", meridian::Payload::Json, "3");
        std::string got;
        while (auto message = stream.next()) got += std::string(*message) + ",";
        std::cout << "count(3) -> " << got << "\n";
        if (!expect(got == "1,2,3,", "stream 1,2,3")) return 1;

        try {
            client.call_json("lookup", "\"x\"");
            return expect(false, "lookup succeeded"), 1;
        } catch (const meridian::Error &e) {
            std::cout << "lookup -> " << e.what() << "\n";
            if (!expect(e.status() == MERIDIAN_NOT_FOUND && e.message() == "no such user", "NOT_FOUND")) return 1;
            if (!expect(e.trailer("retry-in") == std::optional<std::string>("never"), "trailer on failure"))
                return 1;
        }

        auto sum = client.open_call("sum", meridian::CallKind::ClientStreaming, meridian::Payload::Json);
        for (int i = 1; i <= 4; i++) sum.send(std::to_string(i));
        sum.close_send();
        auto total = sum.next();
        std::cout << "sum(1..4) -> " << (total ? *total : "(none)") << "\n";
        if (!expect(total && *total == "10" && !sum.next(), "client streaming sum 10")) return 1;

        auto shout = client.open_call("shout", meridian::CallKind::Bidi, meridian::Payload::Raw);
        std::string replies;
        for (const char *word : {"hi", "there"}) {
            shout.send(word);
            auto back = shout.next();  // one answer per message, read before the next send
            if (!expect(back.has_value(), "a bidi answer")) return 1;
            replies += std::string(*back) + " ";
        }
        shout.close_send();
        std::cout << "shout(hi, there) -> " << replies << "\n";
        if (!expect(replies == "HI! THERE! " && !shout.next(), "bidi HI! THERE!")) return 1;
        try {
            client.call_json("greet", "42");
            return expect(false, "greet(42) succeeded"), 1;
        } catch (const meridian::Error &e) {
            if (!expect(e.status() == MERIDIAN_INVALID_ARGUMENT, "INVALID_ARGUMENT")) return 1;
        }
    } catch (const meridian::Error &e) {
        std::cerr << "error: " << e.what() << "\n";
        return 1;
    }
    return 0;
}
