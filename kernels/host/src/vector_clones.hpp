// FERRY_VECTOR_CLONES: one copy of a function per vector width (AVX-512, AVX2, the build's baseline) and an
// ifunc resolver that picks one at load time (reduce.cpp says why); `flatten` inlines the protocol templates
// into each copy, so the whole loop is compiled for that ISA. Nothing where the compiler lacks either.
#pragma once

#if defined(__x86_64__) && defined(__has_attribute)
#if __has_attribute(target_clones) && __has_attribute(flatten)
#define FERRY_VECTOR_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"), flatten))
#endif
#endif
#ifndef FERRY_VECTOR_CLONES
#define FERRY_VECTOR_CLONES
#endif
