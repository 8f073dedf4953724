// A C++ client of the C example server (examples/c/server.c) through the RAII wrapper.
// `client_cpp PORT CA_PEM`.
#include <iostream>

#include "meridian.hpp"

int main(int argc, char **argv) {
    if (argc != 3) {
        std::cerr << "usage: " << argv[0] << " PORT CA_PEM\n";
        return 2;
    }
    try {
        meridian::Client client(std::string("127.0.0.1:") + argv[1], argv[2]);
        meridian::CallOptions options;
        options.timeout(std::chrono::milliseconds(2000)).metadata("caller", "c++");
        auto greeting = client.call_json("greet", "\"C++\"", &options);
        std::cout << "greet(\"C++\") -> " << greeting.body() << " in " << greeting.total_time().count()
                  << " us\n";
        std::cout << "upper(raii) -> " << client.call_raw("upper", "raii").body() << "\n";
        try {
            client.call_raw("no_such_method", "");
        } catch (const meridian::Error &e) {
            std::cout << "no_such_method -> " << e.what() << "\n";
            if (e.status() != MERIDIAN_UNIMPLEMENTED) return 1;
        }
    } catch (const meridian::Error &e) {
        std::cerr << "error: " << e.what() << "\n";
        return 1;
    }
    return 0;
}
