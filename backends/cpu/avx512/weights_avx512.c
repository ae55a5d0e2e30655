/* backends/cpu/avx512/weights_avx512.c - the avx512 configuration's weight
 * kernels without VNNI. None yet: avx512 starts from avx2's table, whose
 * vpmaddubsw kernels run unchanged here; the vpdpbusd ones are in
 * weights_avx512vnni.c, registered only on CPUs with avx512_vnni. A 512-bit
 * vpmaddubsw or F16 kernel would go here. */
#include "backends/cpu/weights_kernels.h"

void heed_weights_register_avx512(heed_weights_table *t) { (void)t; }
