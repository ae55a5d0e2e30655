/* heed/heed.h - everything public in one include. */
#ifndef HEED_HEED_H
#define HEED_HEED_H

#include "heed/status.h"
#include "heed/dtype.h"
#include "heed/cpu.h"
#include "heed/topology.h"
#include "heed/kernels.h"
#include "heed/pool.h"
#include "heed/memory.h"
#include "heed/plan.h"
#include "heed/runtime.h"
#include "heed/attention.h"
#include "heed/quant.h"
#include "heed/bench.h"
#include "heed/spec.h"
#include "heed/gguf.h"
#include "heed/model.h"
#include "heed/tokenizer.h"
#include "heed/template.h"
#include "heed/chat.h"
#include "heed/weights.h"

#define HEED_VERSION_MAJOR 0
#define HEED_VERSION_MINOR 1
#define HEED_VERSION_PATCH 0
#define HEED_VERSION_STRING "0.1.0"

#endif
