// Random puts to every peer, every byte checked on the target.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "scenarios.hpp"

namespace fabric_worker {
namespace {

using ferry::transport::MemoryKind;

constexpr std::size_t kSlice = std::size_t{6} << 20;  // receiving bytes per source rank
constexpr std::size_t kMaxPiece = std::size_t{1} << 20;

struct Piece {
  std::size_t offset;  // inside the slice
  std::size_t bytes;
};

// The pieces source `src` puts into target `dst` in `round`: sizes log-uniform in [1, 1 MiB], separated by
// random gaps that must stay zero. Both ends derive the same list from the seed.
std::vector<Piece> layout(std::uint64_t seed, int src, int dst, int round) {
  std::mt19937_64 random(seed ^ (std::uint64_t(src) << 40) ^ (std::uint64_t(dst) << 20) ^
                         std::uint64_t(round));
  std::uniform_real_distribution<double> log_size(0.0, std::log(double(kMaxPiece)));
  std::vector<Piece> pieces;
  std::size_t at = 0;
  for (;;) {
    at += random() % 64;  // gap (sometimes none, so pieces also touch)
    auto bytes = std::min<std::size_t>(kMaxPiece, static_cast<std::size_t>(std::exp(log_size(random))));
    bytes = std::max<std::size_t>(bytes, 1);
    if (at + bytes > kSlice) break;
    pieces.push_back({at, bytes});
    at += bytes;
  }
  return pieces;
}

}  // namespace

void random_puts(const Context& context) {
  const int rank = context.rank();
  const int world = context.world();
  const int rounds = context.rounds > 0 ? context.rounds : 3;
  auto fabric = context.make_fabric();
  // The source comes from the caller's memory, the target is allocated by the fabric: both paths get
  // exercised.
  std::vector<std::uint8_t> source(kSlice * world);
  auto send = fabric->register_region(source.data(), source.size(), MemoryKind::host);
  auto receive = fabric->register_region(nullptr, kSlice * world, MemoryKind::host);
  fabric->connect();
  auto* received = static_cast<std::uint8_t*>(fabric->region_base(receive));

  std::size_t puts = 0, bytes = 0;
  for (int round = 0; round < rounds; ++round) {
    std::memset(received, 0, kSlice * world);
    // Source slice for target t mirrors t's receiving slice for us; pieces post in a random interleaving.
    struct Post {
      int dst;
      Piece piece;
    };
    std::vector<Post> posts;
    for (int dst = 0; dst < world; ++dst) {
      if (dst == rank) continue;
      for (const Piece& piece : layout(context.seed, rank, dst, round)) {
        for (std::size_t i = 0; i < piece.bytes; ++i) {
          source[dst * kSlice + piece.offset + i] =
              pattern_byte(context.seed, rank, dst, round, piece.offset + i);
        }
        posts.push_back({dst, piece});
      }
    }
    std::mt19937_64 shuffle(context.seed + rank + round);
    std::shuffle(posts.begin(), posts.end(), shuffle);
    ferry::transport::fabric_barrier(*fabric, context.peers, "random_puts/start");
    for (const Post& post : posts) {
      fabric->put(post.dst, send, post.dst * kSlice + post.piece.offset, receive,
                  rank * kSlice + post.piece.offset, post.piece.bytes);
      bytes += post.piece.bytes;
      fabric->progress();
    }
    puts += posts.size();
    fabric->flush();
    ferry::transport::fabric_barrier(*fabric, context.peers, "random_puts/landed");

    for (int src = 0; src < world; ++src) {
      const std::uint8_t* slice = received + src * kSlice;
      std::vector<bool> covered(kSlice, false);
      if (src != rank) {
        for (const Piece& piece : layout(context.seed, src, rank, round)) {
          for (std::size_t i = 0; i < piece.bytes; ++i) {
            std::size_t at = piece.offset + i;
            std::uint8_t want = pattern_byte(context.seed, src, rank, round, at);
            if (slice[at] != want) {
              char text[256];
              std::snprintf(text, sizeof text,
                            "round %d: byte %zu of the %zu-byte piece at offset %zu from rank %d is 0x%02x, "
                            "expected 0x%02x",
                            round, i, piece.bytes, piece.offset, src, slice[at], want);
              throw ScenarioFailure(text);
            }
            covered[at] = true;
          }
        }
      }
      for (std::size_t at = 0; at < kSlice; ++at) {
        if (!covered[at] && slice[at] != 0) {
          throw ScenarioFailure("round " + std::to_string(round) + ": byte " + std::to_string(at) +
                                " of the slice of rank " + std::to_string(src) +
                                " lies in no piece but was written (0x" + std::to_string(slice[at]) + ")");
        }
      }
    }
    ferry::transport::fabric_barrier(*fabric, context.peers, "random_puts/checked");
  }
  std::printf("rank %d: %zu puts, %zu bytes to %d peers checked over %d rounds\n", rank, puts, bytes,
              world - 1, rounds);
  std::printf("rank %d: fabric %s\n", rank, fabric->description().c_str());
}

}  // namespace fabric_worker
