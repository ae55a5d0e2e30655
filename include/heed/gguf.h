/* heed/gguf.h - GGUF model files (versions 2 and 3), memory-mapped and validated.
 *
 * heed_gguf_open maps a file read-only and checks, before anything is used,
 * that every count, string length, array extent, offset and tensor extent lies
 * inside the file, that tensors are aligned (general.alignment, default 32)
 * and do not overlap, and that every tensor type is one heed reads. A file
 * that fails gets a status and a message naming the field and its offset; no
 * byte outside the mapping is ever read.
 *
 * Strings in GGUF are length-prefixed, not NUL-terminated: a heed_gguf_str
 * borrows bytes of the mapping. Everything returned borrows from the heed_gguf
 * and is valid until heed_gguf_close.
 *
 * Split models ("name-00001-of-00003.gguf"): opening any part opens all of
 * them as one model. Metadata comes from the first part; tensors from all
 * parts, each tensor's data pointer into its own part's mapping.
 */
#ifndef HEED_GGUF_H
#define HEED_GGUF_H

#include <stddef.h>
#include <stdint.h>

#include "heed/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Metadata value types, numbered as in the file. X(NAME, value, name, bytes; 0 = variable). */
#define HEED_GGUF_VTYPE_LIST(X) \
  X(UINT8, 0, "u8", 1)          \
  X(INT8, 1, "i8", 1)           \
  X(UINT16, 2, "u16", 2)        \
  X(INT16, 3, "i16", 2)         \
  X(UINT32, 4, "u32", 4)        \
  X(INT32, 5, "i32", 4)         \
  X(FLOAT32, 6, "f32", 4)       \
  X(BOOL, 7, "bool", 1)         \
  X(STRING, 8, "str", 0)        \
  X(ARRAY, 9, "arr", 0)         \
  X(UINT64, 10, "u64", 8)       \
  X(INT64, 11, "i64", 8)        \
  X(FLOAT64, 12, "f64", 8)

typedef enum heed_gguf_vtype {
#define HEED_X_(N, v, s, b) HEED_GGUF_##N = v,
  HEED_GGUF_VTYPE_LIST(HEED_X_)
#undef HEED_X_
} heed_gguf_vtype;

const char *heed_gguf_vtype_name(int t); /* "u32"; NULL for a value not in the list */

/* Tensor types heed reads, numbered as ggml numbers them.
 * X(NAME, value, name, elements per block, bytes per block). Any other type in
 * a file (the IQ types, Q8_1, ...) is refused at open, naming the tensor and
 * the type (heed_ggml_type_name knows ggml's names for those too). */
#define HEED_GGML_TYPE_LIST(X)  \
  X(F32, 0, "F32", 1, 4)        \
  X(F16, 1, "F16", 1, 2)        \
  X(Q4_0, 2, "Q4_0", 32, 18)    \
  X(Q4_1, 3, "Q4_1", 32, 20)    \
  X(Q5_0, 6, "Q5_0", 32, 22)    \
  X(Q5_1, 7, "Q5_1", 32, 24)    \
  X(Q8_0, 8, "Q8_0", 32, 34)    \
  X(Q2_K, 10, "Q2_K", 256, 84)  \
  X(Q3_K, 11, "Q3_K", 256, 110) \
  X(Q4_K, 12, "Q4_K", 256, 144) \
  X(Q5_K, 13, "Q5_K", 256, 176) \
  X(Q6_K, 14, "Q6_K", 256, 210) \
  X(Q8_K, 15, "Q8_K", 256, 292) \
  X(BF16, 30, "BF16", 1, 2)

typedef enum heed_ggml_type {
#define HEED_X_(N, v, s, e, b) HEED_GGML_##N = v,
  HEED_GGML_TYPE_LIST(HEED_X_)
#undef HEED_X_
} heed_ggml_type;

/* "Q4_K"; ggml's name for a type heed does not read ("IQ2_XXS"); NULL when
 * the value is no ggml type at all. */
const char *heed_ggml_type_name(int t);
/* 1 when heed reads type t; then *block_elems and *block_bytes (either may be NULL) are set. */
int heed_ggml_type_info(int t, uint32_t *block_elems, uint32_t *block_bytes);

typedef struct heed_gguf_str {
  const char *ptr; /* borrowed from the mapping; not NUL-terminated */
  uint64_t len;
} heed_gguf_str;

/* One metadata value. Scalars are held here; strings borrow the mapping; an
 * array is a handle read with heed_gguf_array_get (its elements may
 * themselves be arrays: nested arrays are read up to 16 levels deep; a file
 * nesting deeper is refused at open). */
typedef struct heed_gguf_value {
  heed_gguf_vtype type;
  union {
    uint64_t u;        /* UINT8, UINT16, UINT32, UINT64, BOOL (0 or 1) */
    int64_t i;         /* INT8, INT16, INT32, INT64 */
    double f;          /* FLOAT32, FLOAT64 */
    heed_gguf_str str; /* STRING */
    struct {
      heed_gguf_vtype elem_type;
      uint64_t n;     /* element count */
      uint64_t node;  /* the reader's handle for this array */
    } arr;             /* ARRAY */
  } v;
} heed_gguf_value;

typedef struct heed_gguf_tensor {
  const char *name;     /* NUL-terminated copy, owned by the heed_gguf */
  heed_ggml_type type;
  uint32_t n_dims;      /* 1..4 */
  uint64_t ne[4];       /* elements per dimension, ne[0] fastest; unused ones are 1 */
  uint64_t n_elems;     /* product of ne */
  uint64_t bytes;       /* n_elems / block_elems * block_bytes */
  uint64_t offset;      /* from the start of its file's data section */
  uint32_t file;        /* which split part holds it (0 for single files) */
  const void *data;     /* borrowed from that part's mapping; aligned to alignment (open_memory: from data's start) */
} heed_gguf_tensor;

typedef struct heed_gguf heed_gguf;

/* Opens (and maps) path; a split part opens every part. *out is the caller's
 * to close. On failure *out is NULL and err (may be NULL) names the file, the
 * field, its offset and the bad value. */
heed_status heed_gguf_open(const char *path, heed_gguf **out, heed_error *err);
/* heed_gguf_open with flags: HEED_GGUF_LOAD reads each file into anonymous
 * memory on 2 MiB transparent huge pages (madvise) instead of mapping it
 * (the page cache keeps the file, reclaimable, for the next open): the tensors are then
 * read through a few hundred TLB entries, not a quarter million (decode
 * streams every weight once per token), at the cost of the file's size in
 * resident memory, touched by the calling thread (so on its NUMA node). */
#define HEED_GGUF_LOAD 1u
heed_status heed_gguf_open_flags(const char *path, unsigned flags, heed_gguf **out, heed_error *err);
/* The same over bytes the caller owns (size bytes at data, kept alive and
 * unchanged until close); data need not be aligned beyond 1. For tests and fuzzing. */
heed_status heed_gguf_open_memory(const void *data, size_t size, heed_gguf **out, heed_error *err);
void heed_gguf_close(heed_gguf *g); /* NULL is fine */

uint32_t heed_gguf_version(const heed_gguf *g);   /* 2 or 3 */
uint32_t heed_gguf_alignment(const heed_gguf *g); /* general.alignment, or 32 */
uint32_t heed_gguf_n_files(const heed_gguf *g);   /* split parts; 1 for a single file */
uint64_t heed_gguf_file_bytes(const heed_gguf *g); /* all parts together */
/* Path of split part i ("<memory>" for heed_gguf_open_memory); NULL when i >= n_files. */
const char *heed_gguf_file_path(const heed_gguf *g, uint32_t i);

/* Metadata, in file order. */
uint64_t heed_gguf_n_kv(const heed_gguf *g);
/* Key and value of entry i; HEED_E_RANGE when i >= n_kv. */
heed_status heed_gguf_kv_at(const heed_gguf *g, uint64_t i, heed_gguf_str *key, heed_gguf_value *val);
/* Index of key, or -1 when absent. */
int64_t heed_gguf_find_key(const heed_gguf *g, const char *key);
/* The value of key. HEED_E_NOT_FOUND when absent. */
heed_status heed_gguf_get(const heed_gguf *g, const char *key, heed_gguf_value *val);
/* Typed reads of key: HEED_E_NOT_FOUND when absent, HEED_E_INVALID when its
 * type does not convert (get_u64: any integer type with a value >= 0, and
 * BOOL; get_i64: any integer type that fits; get_f64: any integer or float
 * type; get_bool: BOOL only; get_str: STRING only). The message (heed_gguf_last_error) names the key
 * and the type found. */
heed_status heed_gguf_get_u64(const heed_gguf *g, const char *key, uint64_t *out);
heed_status heed_gguf_get_i64(const heed_gguf *g, const char *key, int64_t *out);
heed_status heed_gguf_get_f64(const heed_gguf *g, const char *key, double *out);
heed_status heed_gguf_get_bool(const heed_gguf *g, const char *key, int *out);
heed_status heed_gguf_get_str(const heed_gguf *g, const char *key, heed_gguf_str *out);
/* Element i of an array value (O(1), arrays of strings and nested arrays
 * included: the reader indexes them at open). HEED_E_RANGE when i >= n. */
heed_status heed_gguf_array_get(const heed_gguf *g, const heed_gguf_value *arr, uint64_t i, heed_gguf_value *out);
/* Raw little-endian element bytes of an array of a fixed-size type (not
 * STRING or ARRAY): n * size bytes, borrowed, possibly unaligned. NULL otherwise. */
const void *heed_gguf_array_data(const heed_gguf *g, const heed_gguf_value *arr);

/* Tensors, in file order (part by part). */
uint64_t heed_gguf_n_tensors(const heed_gguf *g);
const heed_gguf_tensor *heed_gguf_tensor_at(const heed_gguf *g, uint64_t i); /* NULL when out of range */
const heed_gguf_tensor *heed_gguf_find_tensor(const heed_gguf *g, const char *name); /* NULL when absent */

/* The message of the last failed call on g, naming the key or tensor; this
 * thread's copy, valid until its next *_last_error call. "" when none. */
const char *heed_gguf_last_error(const heed_gguf *g);

#ifdef __cplusplus
}
#endif
#endif
