#include "describe.hpp"

#include <cstdio>

namespace ferry::kernels::host {

using protocol::FaultKind;
using protocol::RingKind;
using protocol::Stage;
using protocol::WaitKind;

const char* stage_name(Stage stage) {
  switch (stage) {
    case Stage::notify_send:
      return "notify-send";
    case Stage::notify_receive:
      return "notify-receive";
    case Stage::dispatch_send:
      return "dispatch-send";
    case Stage::dispatch_forward:
      return "dispatch-forward";
    case Stage::dispatch_receive:
      return "dispatch-receive";
    case Stage::combine_send:
      return "combine-send";
    case Stage::combine_forward:
      return "combine-forward";
    case Stage::combine_receive:
      return "combine-receive";
    case Stage::low_latency_acquire:
      return "low-latency-acquire";
    case Stage::low_latency_dispatch_send:
      return "low-latency-dispatch-send";
    case Stage::low_latency_dispatch_receive:
      return "low-latency-dispatch-receive";
    case Stage::low_latency_combine_send:
      return "low-latency-combine-send";
    case Stage::low_latency_combine_receive:
      return "low-latency-combine-receive";
    case Stage::low_latency_release:
      return "low-latency-release";
    case Stage::low_latency_barrier:
      return "low-latency-barrier";
  }
  return "unknown-stage";
}

const char* ring_name(RingKind ring) {
  switch (ring) {
    case RingKind::notify:
      return "notify";
    case RingKind::dispatch_rdma:
      return "dispatch_rdma";
    case RingKind::dispatch_nvl:
      return "dispatch_nvl";
    case RingKind::dispatch_direct:
      return "dispatch_direct";
    case RingKind::combine_direct:
      return "combine_direct";
    case RingKind::combine_nvl:
      return "combine_nvl";
    case RingKind::combine_rdma:
      return "combine_rdma";
  }
  return "unknown-ring";
}

std::string describe_wait(const protocol::Wait& wait) {
  std::string counters = "(head " + std::to_string(wait.head) + ", tail " + std::to_string(wait.tail);
  if (wait.expected > 0)
    counters += ", " + std::to_string(wait.done) + " of " + std::to_string(wait.expected) + " done";
  counters += ")";
  std::string peer = "peer rank " + std::to_string(wait.peer_rank);
  switch (wait.kind) {
    case WaitKind::credit:
      return "waits for " + peer + " to free a slot of its " + ring_name(wait.ring) + " ring " + counters;
    case WaitKind::data:
      return "waits for " + peer + " to publish into this rank's " + ring_name(wait.ring) + " ring " +
             counters;
    case WaitKind::none:
      break;
  }
  return "is busy";
}

namespace {
std::string hex(std::int64_t value) {
  char text[24];
  std::snprintf(text, sizeof(text), "%016llx", static_cast<unsigned long long>(value));
  return text;
}
}  // namespace

std::string describe_fault(const protocol::Fault& fault) {
  std::string from =
      " from peer rank " + std::to_string(fault.peer_rank) + " on the " + ring_name(fault.ring) + " ring";
  std::string got = std::to_string(fault.got);
  std::string want = std::to_string(fault.expected);
  switch (fault.kind) {
    case FaultKind::wrong_operation:
      return "a message of operation #" + got + from + " while this rank runs operation #" + want +
             ": the ranks issue different sequences of dispatch/combine calls";
    case FaultKind::wrong_source:
      return "a message claiming source rank " + got + from + " (expected " + want + ")";
    case FaultKind::wrong_token:
      return "a row for source token " + got + from + " where token " + want + " was due";
    case FaultKind::wrong_hidden:
      return "hidden size " + got + from + " but this rank uses " + want;
    case FaultKind::wrong_payload:
      return "element type #" + got + from + " but this rank uses #" + want;
    case FaultKind::wrong_topk:
      return "num_topk " + got + from + " but this rank uses " + want;
    case FaultKind::wrong_experts:
      return "num_experts " + got + from + " but this rank uses " + want;
    case FaultKind::wrong_channels:
      return std::to_string(fault.got) + " channels" + from + " but this rank uses " + want;
    case FaultKind::wrong_settings:
      return "settings fingerprint " + hex(fault.got) + from + " but this rank's is " + hex(fault.expected) +
             ": the ranks run with different Config values or chunk sizes";
    case FaultKind::routing_mismatch:
      return "token " + std::to_string(fault.token) + " whose expert ids on node " + want +
             " disagree with the layout it is dispatched by (compute the layout from this topk_idx)";
    case FaultKind::bad_expert:
      return "token " + std::to_string(fault.token) + " has expert id " + got + ", outside [0, " + want +
             ") (topk_idx changed after its layout was computed?)";
    case FaultKind::bad_mask:
      return "local-rank mask " + got + from + " outside " + want;
    case FaultKind::too_many:
      return std::string("more tokens") + from + " than announced (" + got + " > " + want + ")";
    case FaultKind::past_capacity:
      return "combine on the handle of a dispatch that received more than its num_worst_tokens: row or "
             "record " +
             got + " for peer rank " + std::to_string(fault.peer_rank) + " on the " + ring_name(fault.ring) +
             " ring, past the " + want +
             " it could record (its rows were dropped; dispatch again with a larger num_worst_tokens)";
    case FaultKind::stacked_arrivals:
    case FaultKind::bad_count_block:
      return describe_low_latency_fault(fault);
    case FaultKind::none:
      break;
  }
  return "no fault";
}

std::string seconds_text(Duration duration) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.2f s", std::chrono::duration<double>(duration).count());
  return text;
}

std::string channel_label(int rank, int channel) {
  if (channel < 0) return "rank " + std::to_string(rank) + " notify";
  return "rank " + std::to_string(rank) + " channel " + std::to_string(channel);
}

std::string describe_low_latency_fault(const protocol::Fault& fault) {
  using protocol::FaultKind;
  const std::string peer = "rank " + std::to_string(fault.peer_rank);
  switch (fault.kind) {
    case FaultKind::wrong_operation:
      return "a word or row tagged " + std::to_string(fault.got) + " from " + peer + " where tag " +
             std::to_string(fault.expected) +
             " was due (tag = operation * 2 + combine): the ranks issue different sequences of low-latency "
             "calls";
    case FaultKind::stacked_arrivals:
      return "the arrivals of " + std::to_string(fault.got) + " operations at once from " + peer +
             ", where one was due: it ran a use of this buffer ahead of this rank (different sequences of "
             "calls, or a rank unmasked without clean_low_latency_buffer)";
    case FaultKind::bad_count_block:
      return "a block of counts from " + peer + " laid out for another shape, or not written (check " +
             hex(fault.got) + ", this rank's " + hex(fault.expected) +
             "): every rank must pass the same num_max_dispatch_tokens_per_rank, hidden and num_experts, and "
             "clean with the same shape";
    case FaultKind::wrong_token:
      return "a row of source token " + std::to_string(fault.got) + " from " + peer + ", outside its " +
             std::to_string(fault.expected) + " tokens";
    case FaultKind::wrong_source:
      return "a row claiming source rank " + std::to_string(fault.got) + " in " + peer + "'s slots";
    case FaultKind::wrong_settings:
      return "a row from " + peer + " dispatched with another shape or element type (check " +
             std::to_string(fault.got) + ", this rank's " + std::to_string(fault.expected) +
             "): every rank must pass the same num_max_dispatch_tokens_per_rank, hidden, num_experts and "
             "use_fp8";
    case FaultKind::too_many:
      return peer + " announced " + std::to_string(fault.got) + " rows for one expert, more than the " +
             std::to_string(fault.expected) +
             " slots (num_max_dispatch_tokens_per_rank differs between ranks?)";
    default:
      return describe_fault(fault);
  }
}

}  // namespace ferry::kernels::host
