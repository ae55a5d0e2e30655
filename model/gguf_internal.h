/* model/gguf_internal.h - the reader's tables, shared by model/gguf.c only
 * (and by tests that look inside); not installed.
 *
 * A part is one mapped file. Its metadata is kept as offsets into the
 * mapping: nothing is copied but the tensor names (which callers want
 * NUL-terminated). Arrays are nodes; an array of strings keeps where each
 * string starts (str_at) and an array of arrays keeps its children as
 * consecutive nodes, so element i of any array is found in O(1). */
#ifndef HEED_MODEL_GGUF_INTERNAL_H
#define HEED_MODEL_GGUF_INTERNAL_H

#include <pthread.h>
#include <stdint.h>

#include "heed/gguf.h"

/* Deeper nesting of arrays inside arrays is refused: no model needs more, and
 * the parser recurses once per level. */
#define HEED_GGUF_MAX_DEPTH 16
#define HEED_GGUF_DEFAULT_ALIGNMENT 32
#define HEED_GGUF_MAX_DIMS 4

typedef struct gg_node {
  heed_gguf_vtype elem; /* element type */
  uint64_t n;           /* element count */
  uint64_t at;          /* byte offset of element 0 in the part */
  uint64_t index;       /* STRING: first of n entries of str_at; ARRAY: first of n child nodes */
} gg_node;

typedef struct gg_kv {
  uint64_t rec_at;       /* byte offset of the entry (its key's length), for messages */
  uint64_t key_at;       /* byte offset of the key's bytes */
  uint64_t key_len;
  heed_gguf_value val;   /* strings borrow the mapping; an array's node indexes nodes[] */
} gg_kv;

typedef struct gg_part {
  char *path;             /* owned; for messages; "<memory>" for heed_gguf_open_memory */
  const uint8_t *base;    /* [size] the mapping, or the caller's bytes */
  uint64_t size;
  int mapped;             /* munmap(map_addr, map_len) at close */
  void *map_addr;
  size_t map_len;
  uint32_t version, alignment;
  uint64_t header_end;    /* end of the tensor infos */
  uint64_t data_start;    /* header_end aligned up: tensor offsets count from here */
  gg_kv *kv;              /* [n_kv] in file order */
  uint64_t n_kv, cap_kv;
  uint32_t *kv_hash;      /* [kv_hash_cap] open addressing, kv index + 1 (0: empty) */
  uint64_t kv_hash_cap;
  gg_node *nodes;         /* [n_nodes] */
  uint64_t n_nodes, cap_nodes;
  uint64_t *str_at;       /* [n_str] byte offset of each string element (its length) */
  uint64_t n_str, cap_str;
  heed_gguf_tensor *tensors; /* [n_tensors] in file order; names point into names */
  uint64_t *tensor_rec;   /* [n_tensors] byte offset of each tensor's info, for messages */
  uint64_t n_tensors, cap_tensors, cap_rec;
  char *names;            /* the tensor names, each NUL-terminated */
  uint64_t names_len, cap_names;
} gg_part;

struct heed_gguf {
  gg_part *parts;             /* [n_parts]; metadata from parts[0] */
  uint32_t n_parts;
  heed_gguf_tensor *tensors;  /* [n_tensors] all parts' tensors, part by part */
  uint64_t n_tensors;
  uint32_t *t_hash;           /* [t_hash_cap] tensor index + 1 */
  uint64_t t_hash_cap;
  uint64_t file_bytes;
  pthread_mutex_t mu;         /* guards err: const getters record their refusals */
  heed_error err;
};

#endif
