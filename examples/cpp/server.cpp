// A Meridian server in C++ through the RAII wrapper: `server_cpp DIR` writes development
// certificates into DIR, serves `greet` (JSON "Ada" -> "Hello, Ada!", with a trailer naming
// the caller's `caller` metadata), `upper` (raw bytes, upper-cased), `count` (JSON n ->
// a stream 1..n), `lookup` (always NOT_FOUND, with a trailer), `sum` (client streaming:
// JSON numbers in, their sum out) and `shout` (bidi: each word back upper-cased) on a free
// loopback port, prints
// "PORT <n>", and stops gracefully when stdin closes.
#include <cctype>
#include <iostream>
#include <string>

#include "meridian.hpp"

int main(int argc, char **argv) {
    if (argc != 2) {
        std::cerr << "usage: " << argv[0] << " CERT_DIR\n";
        return 2;
    }
    const std::string dir = argv[1];
    try {
        meridian::write_dev_certificates(dir);
        meridian::Server server("example");
        server.unary(
            "greet", meridian::Payload::Json,
            [](const meridian::Request &req, meridian::Reply &reply) {
                std::string_view json = req.body();
                if (json.size() < 2 || json.front() != '"' || json.back() != '"')
                    throw meridian::Error(MERIDIAN_INVALID_ARGUMENT, "greet takes a name (a JSON string)");
                auto caller = req.metadata("caller");
                reply.trailer("greeted-for", caller ? *caller : std::string_view("anonymous"));
                return "\"Hello, " + std::string(json.substr(1, json.size() - 2)) + "!\"";
            },
            true);
        server.unary("upper", meridian::Payload::Raw, [](const meridian::Request &req, meridian::Reply &) {
            std::string out(req.body());
            for (char &c : out) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
            return out;
        });
        server.server_streaming("count", meridian::Payload::Json,
                                [](const meridian::Request &req, meridian::Reply &reply) {
                                    int n = std::stoi(std::string(req.body()));
                                    for (int i = 1; i <= n; i++) reply.send(std::to_string(i));
                                });
        server.unary("lookup", meridian::Payload::Json,
                     [](const meridian::Request &, meridian::Reply &reply) -> std::string {
                         reply.trailer("retry-in", "never");
                         throw meridian::Error(MERIDIAN_NOT_FOUND, "no such user");
                     });
        server.client_streaming("sum", meridian::Payload::Json,
                                [](const meridian::Request &req, meridian::Reply &) {
                                    long total = 0;
                                    while (auto n = req.next()) total += std::stol(std::string(*n));
                                    return std::to_string(total);
                                });
        server.bidi("shout", meridian::Payload::Raw, [](const meridian::Request &req, meridian::Reply &reply) {
            while (auto word = req.next()) {
                std::string out(*word);
                for (char &c : out) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
                reply.send(out + "!");
            }
        });
        server.start("127.0.0.1:0", dir + "/server.pem", dir + "/server.key");
        std::cout << "PORT " << server.port() << std::endl;
        std::string line;
        while (std::getline(std::cin, line)) {
        }
        server.stop(std::chrono::milliseconds(2000));
    } catch (const meridian::Error &e) {
        std::cerr << "error: " << e.what() << "\n";
        return 1;
    }
    return 0;
}
