/* spec/spec_internal.h - fault injection for the verifier's statistical
 * tests: each fault is a classic bug, and the tests show that they catch it.
 * Not installed; never set outside tests. */
#ifndef HEED_SPEC_INTERNAL_H
#define HEED_SPEC_INTERNAL_H

#include "heed/spec.h"

enum {
  HEED_SPEC_FAULT_NONE = 0,
  HEED_SPEC_FAULT_NO_RESIDUAL = 1, /* on rejection, draw from p instead of max(0, p - q) */
  HEED_SPEC_FAULT_IGNORE_Q = 2     /* accept with probability p(x), as if q(x) were 1 */
};
void heed_spec_set_fault(heed_spec *s, int fault);

#endif
