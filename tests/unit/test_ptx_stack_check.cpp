// The PTX check behind ptx_stack_check.* (tools/ptx_stack_check): on PTX written the way nvcc writes it, it
// flags every global-space access whose address comes from the stack, and nothing else.
#include <catch2/catch.hpp>

#include <algorithm>
#include <string>

#include "ptx_stack_check/ptx_stack_check.hpp"

namespace check = ferry::tools::ptx_stack_check;

namespace {

// A kernel with a local depot, as nvcc emits one, around `body`.
std::string kernel(const std::string& name, const std::string& body) {
  return ".visible .entry " + name + "(\n\t.param .u64 " + name +
         "_param_0\n)\n.maxntid 128, 1, 1\n{\n"
         "\t.local .align 16 .b8 \t__local_depot0[64];\n\t.reg .b64 \t%SP;\n\t.reg .b64 \t%SPL;\n"
         "\t.reg .pred \t%p<4>;\n\t.reg .b32 \t%r<16>;\n\t.reg .b64 \t%rd<32>;\n\n"
         "\tmov.u64 \t%SPL, __local_depot0;\n\tcvta.local.u64 \t%SP, %SPL;\n\tld.param.u64 \t%rd1, [" +
         name + "_param_0];\n\tcvta.to.global.u64 \t%rd2, %rd1;\n" + body + "\tret;\n\n}\n";
}

}  // namespace

TEST_CASE("ptx stack check: a stack header read back through ld.global is flagged", "[ptx]") {
  // What the executor's notify compiled to before the fix: the header written with st.local, then copied
  // with the 16-byte global loads of the copy routine.
  const std::string ptx = kernel("notify",
                                 "\tadd.u64 \t%rd3, %SP, 0;\n"
                                 "\tadd.u64 \t%rd4, %SPL, 0;\n"
                                 "\tst.local.v2.u32 \t[%rd4], {%r1, %r2};\n"
                                 "\tor.b64 \t%rd5, %rd2, %rd3;\n"
                                 "\tand.b64 \t%rd6, %rd5, 15;\n"
                                 "\tsetp.eq.s64 \t%p1, %rd6, 0;\n"
                                 "\t@%p1 bra \t$L__BB0_2;\n"
                                 "$L__BB0_2:\n"
                                 "\tshl.b64 \t%rd7, %rd8, 4;\n"
                                 "\tadd.s64 \t%rd9, %rd3, %rd7;\n"
                                 "\t// begin inline asm\n"
                                 "\tld.global.L1::no_allocate.v4.s32 {%r3, %r4, %r5, %r6}, [%rd9];\n"
                                 "\t// end inline asm\n"
                                 "\tadd.s64 \t%rd10, %rd2, %rd7;\n"
                                 "\tst.global.v4.s32 [%rd10], {%r3, %r4, %r5, %r6};\n");
  const check::Scan scan = check::scan_ptx(ptx);
  CHECK(scan.functions == 1);
  CHECK(scan.global_accesses == 2);
  REQUIRE(scan.findings.size() == 1);
  CHECK(scan.findings[0].function == "notify");
  CHECK(scan.findings[0].address == "[%rd9]");
  CHECK(scan.findings[0].instruction == "ld.global.L1::no_allocate.v4.s32 {%r3, %r4, %r5, %r6}, [%rd9]");
  const std::string before = ptx.substr(0, ptx.find("\tld.global.L1"));
  CHECK(scan.findings[0].line == 1 + static_cast<int>(std::count(before.begin(), before.end(), '\n')));
  const std::string text = check::describe(scan.findings[0], "notify.ptx");
  CHECK(text.find("notify.ptx:" + std::to_string(scan.findings[0].line) + ": in notify") == 0);
}

TEST_CASE("ptx stack check: every global access variant and every way to the stack", "[ptx]") {
  const std::string ptx = kernel("variants",
                                 "\tmov.u64 \t%rd3, %SPL;\n"
                                 "\tcvta.local.u64 \t%rd4, %rd3;\n"
                                 "\tsub.s64 \t%rd5, %rd4, 8;\n"
                                 "\tselp.b64 \t%rd6, %rd5, %rd2, %p1;\n"
                                 "\tcvta.to.global.u64 \t%rd7, %rd6;\n"
                                 "\tld.global.nc.v2.u32 \t{%r1, %r2}, [%rd7];\n"
                                 "\tst.global.u64 \t[%rd5+8], %rd2;\n"
                                 "\tatom.global.add.u64 \t%rd8, [%rd6], 1;\n"
                                 "\tred.global.add.u64 \t[%rd4], 1;\n"
                                 "\tld.global.u32 \t%r3, [__local_depot0+4];\n"
                                 "\t@!%p2 st.global.L1::no_allocate.u32 \t[%rd7+4], %r3;\n");
  const check::Scan scan = check::scan_ptx(ptx);
  REQUIRE(scan.findings.size() == 6);
  CHECK(scan.global_accesses == 6);
}

TEST_CASE("ptx stack check: global pointers, generic and local accesses pass", "[ptx]") {
  const std::string ptx = kernel("clean",
                                 "\tadd.u64 \t%rd3, %SPL, 0;\n"
                                 "\tst.local.u64 \t[%rd3], %rd2;\n"
                                 "\tld.local.u64 \t%rd4, [%rd3];\n"  // a global pointer spilled and reloaded
                                 "\tld.global.u32 \t%r1, [%rd4];\n"  // ... is a global address
                                 "\tadd.u64 \t%rd5, %SP, 0;\n"
                                 "\tld.u32 \t%r2, [%rd5];\n"  // generic access to the stack: fine
                                 "\tst.u32 \t[%rd5+4], %r2;\n"
                                 "\tatom.global.add.u64 \t%rd6, [%rd2], 1;\n"  // the loaded value is data
                                 "\tld.global.u64 \t%rd7, [%rd6];\n"
                                 "\tld.global.v4.u32 \t{%r3, %r4, %r5, %r6}, [%rd2+16];\n"
                                 "\tst.global.u64 \t[%rd2], %rd5;\n"  // storing a stack address is not an
                                                                      // access through it
                                 "\tisspacep.global \t%p1, %rd5;\n"
                                 "\tcvta.to.global.u64 \t%rd8, %rd1;\n"
                                 "\tld.global.u32 \t%r7, [%rd8];\n");
  const check::Scan scan = check::scan_ptx(ptx);
  CHECK(scan.findings.empty());
  CHECK(scan.global_accesses == 6);
}

TEST_CASE("ptx stack check: functions are separate, declarations and comments are not code", "[ptx]") {
  // %rd3 is a stack address in `first` only; the same name in `second` holds a global pointer.
  const std::string ptx =
      "//\n// Generated by NVIDIA NVVM Compiler\n.version 9.0\n.target sm_80\n.address_size 64\n\n"
      ".extern .func (.param .b32 func_retval0) vprintf\n(\n\t.param .b64 vprintf_param_0\n);\n"
      ".global .align 8 .b8 table[64];\n"
      "/* ld.global.u32 %r1, [%SP]; in a block comment */\n" +
      kernel("first",
             "\tadd.u64 \t%rd3, %SP, 16;\n\tld.u32 \t%r1, [%rd3];  // ld.global.u32 %r1, [%rd3];\n") +
      ".func (.param .b64 func_retval0) second(\n\t.param .b64 second_param_0\n)\n{\n"
      "\t.reg .b64 \t%rd<8>;\n\tld.param.u64 \t%rd3, [second_param_0];\n"
      "\t{\n\t.reg .b32 \ttemp;\n\tld.global.u32 \ttemp, [%rd3];\n\t}\n"
      "\tst.param.b64 \t[func_retval0], %rd3;\n\tret;\n}\n";
  const check::Scan scan = check::scan_ptx(ptx);
  CHECK(scan.functions == 2);
  CHECK(scan.global_accesses == 1);
  CHECK(scan.findings.empty());
}

TEST_CASE("ptx stack check: a module without functions has nothing to scan", "[ptx]") {
  const check::Scan scan = check::scan_ptx(".version 9.0\n.target sm_90a\n.address_size 64\n");
  CHECK(scan.functions == 0);
  CHECK(scan.findings.empty());
}
