/* serve/disk.c - the prefix cache's disk tier: whole KV blocks in files.
 *
 * A block of block_len tokens is named by a chain hash over every token up to
 * its end (srv_disk_chain: the hash of the block before it seeds the next),
 * so a file serves exactly one prefix. The folder holds one subfolder per
 * model and KV configuration (its key: a hash of the model file's bytes and
 * the cache's layout), so servers of different models can share --cache-dir
 * and never read each other's blocks. A file:
 *
 *   header   magic "HEEDKVB1", version, block_len, key, hash, parent hash,
 *            block index, payload bytes, payload checksum, header checksum
 *   tokens   [block_len] int32, the block's tokens
 *   payload  the block as the model's caches store it (every layer)
 *
 * Everything is little-endian as the host writes it (the key includes the
 * layout, and a file from another kind of machine fails its checks). A file
 * that fails any check (its name, header, tokens, parent, checksums) is
 * deleted, never used: at open for what the header shows, at read for the
 * rest. Files are written to a temporary name and renamed, so a crash leaves
 * no half file under a block's name. The folder is kept under a byte limit by
 * deleting the least recently used files. Hashes and checksums are XXH3 (64
 * bits; libxxhash). Not thread-safe: the engine calls it under its lock. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "serve/serve_internal.h"

#define DISK_MAGIC "HEEDKVB1"
#define DISK_VERSION 1u

typedef struct disk_header {
  char magic[8];
  uint32_t version, block_len;
  uint64_t key, hash, parent;
  uint32_t index, reserved;
  uint64_t payload_bytes, payload_sum, header_sum; /* header_sum: of the header before it and the tokens */
} disk_header;

typedef struct disk_entry {
  uint64_t hash; /* 0: an empty slot */
  uint64_t bytes, used;
} disk_entry;

struct srv_disk {
  srv_disk_config cfg;
  char *dir;               /* the model's subfolder */
  disk_entry *tab;         /* open addressing on hash */
  size_t cap, n;
  uint64_t bytes, tick;
  srv_disk_stats st;
  char *path;              /* scratch for names */
  size_t path_cap;
};

static uint64_t nonzero(uint64_t h) { return h ? h : 0x9e3779b97f4a7c15ull; }

uint64_t srv_disk_chain(uint64_t parent, const int32_t *tokens, unsigned n) {
  return nonzero(XXH3_64bits_withSeed(tokens, (size_t)n * sizeof *tokens, parent));
}

/* ---------- the index ---------- */

static disk_entry *find(const srv_disk *d, uint64_t h) {
  if (!d->cap) return NULL;
  for (size_t i = h & (d->cap - 1);; i = (i + 1) & (d->cap - 1)) {
    if (d->tab[i].hash == h) return &d->tab[i];
    if (!d->tab[i].hash) return NULL;
  }
}

static int put_entry(srv_disk *d, uint64_t h, uint64_t bytes, uint64_t used) {
  if ((d->n + 1) * 2 > d->cap) {
    size_t cap = d->cap ? d->cap * 2 : 64;
    disk_entry *t = calloc(cap, sizeof *t);
    if (!t) return -1;
    for (size_t i = 0; i < d->cap; i++)
      if (d->tab[i].hash) {
        size_t j = d->tab[i].hash & (cap - 1);
        while (t[j].hash) j = (j + 1) & (cap - 1);
        t[j] = d->tab[i];
      }
    free(d->tab);
    d->tab = t, d->cap = cap;
  }
  size_t i = h & (d->cap - 1);
  while (d->tab[i].hash && d->tab[i].hash != h) i = (i + 1) & (d->cap - 1);
  if (!d->tab[i].hash) d->n++, d->bytes += bytes;
  d->tab[i] = (disk_entry){.hash = h, .bytes = bytes, .used = used};
  return 0;
}

/* Removes h from the index (backward-shift deletion keeps the probe chains whole). */
static void drop_entry(srv_disk *d, uint64_t h) {
  disk_entry *e = find(d, h);
  if (!e) return;
  d->bytes -= e->bytes, d->n--;
  size_t i = (size_t)(e - d->tab);
  for (size_t j = (i + 1) & (d->cap - 1); d->tab[j].hash; j = (j + 1) & (d->cap - 1)) {
    size_t home = d->tab[j].hash & (d->cap - 1);
    /* move j into the hole at i unless its home lies cyclically in (i, j] */
    if ((j > i && (home <= i || home > j)) || (j < i && home <= i && home > j)) {
      d->tab[i] = d->tab[j];
      i = j;
    }
  }
  d->tab[i].hash = 0;
}

/* ---------- files ---------- */

static const char *name_of(srv_disk *d, uint64_t h, int tmp) {
  size_t need = strlen(d->dir) + 40;
  if (need > d->path_cap) {
    char *p = realloc(d->path, need);
    if (!p) return NULL;
    d->path = p, d->path_cap = need;
  }
  snprintf(d->path, d->path_cap, "%s/%016llx.%s", d->dir, (unsigned long long)h, tmp ? "tmp" : "kvb");
  return d->path;
}

static void delete_file(srv_disk *d, uint64_t h, int corrupt) {
  const char *p = name_of(d, h, 0);
  if (p) unlink(p);
  drop_entry(d, h);
  if (corrupt) d->st.deleted_bad++;
}

static size_t file_bytes(const srv_disk *d) {
  return sizeof(disk_header) + (size_t)d->cfg.block_len * sizeof(int32_t) + d->cfg.payload_bytes;
}

static uint64_t header_sum(const disk_header *h, const int32_t *tokens, unsigned n) {
  XXH3_state_t *s = XXH3_createState();
  if (!s) return 0;
  XXH3_64bits_reset(s);
  XXH3_64bits_update(s, h, offsetof(disk_header, header_sum));
  XXH3_64bits_update(s, tokens, (size_t)n * sizeof *tokens);
  uint64_t r = XXH3_64bits_digest(s);
  XXH3_freeState(s);
  return r;
}

/* 1 when a header read from the file named for h could be this model's block h. */
static int header_ok(const srv_disk *d, const disk_header *x, uint64_t h) {
  return !memcmp(x->magic, DISK_MAGIC, 8) && x->version == DISK_VERSION && x->block_len == d->cfg.block_len &&
         x->key == d->cfg.key && x->hash == h && x->payload_bytes == d->cfg.payload_bytes;
}

/* The least recently used files go until `room` more bytes fit the limit. */
static void make_room(srv_disk *d, uint64_t room) {
  while (d->n && d->bytes + room > d->cfg.limit) {
    disk_entry *old = NULL;
    for (size_t i = 0; i < d->cap; i++)
      if (d->tab[i].hash && (!old || d->tab[i].used < old->used)) old = &d->tab[i];
    delete_file(d, old->hash, 0);
    d->st.evicted++;
  }
}

static int mkdirs(const char *path) {
  char *p = strdup(path);
  if (!p) return -1;
  for (char *s = p + 1; *s; s++)
    if (*s == '/') {
      *s = 0;
      if (mkdir(p, 0755) && errno != EEXIST) return free(p), -1;
      *s = '/';
    }
  int r = mkdir(p, 0755) && errno != EEXIST ? -1 : 0;
  free(p);
  return r;
}

/* Reads the folder: this model's files into the index, oldest first as used,
 * anything else there (temporary files, foreign names, bad headers) deleted. */
static heed_status scan(srv_disk *d, char *err, size_t errlen) {
  DIR *dir = opendir(d->dir);
  if (!dir) {
    snprintf(err, errlen, "--cache-dir: cannot read %s: %s", d->dir, strerror(errno));
    return HEED_E_IO;
  }
  struct dirent *de;
  while ((de = readdir(dir))) {
    if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
    char full[4096];
    snprintf(full, sizeof full, "%s/%s", d->dir, de->d_name);
    unsigned long long h = 0;
    int used = 0;
    disk_header x;
    struct stat sb;
    int ok = sscanf(de->d_name, "%16llx.kvb%n", &h, &used) == 1 && used == 20 && !de->d_name[used] && h;
    if (ok) {
      FILE *f = fopen(full, "rb");
      ok = f && fread(&x, sizeof x, 1, f) == 1 && header_ok(d, &x, h) && fstat(fileno(f), &sb) == 0 &&
           (uint64_t)sb.st_size == file_bytes(d);
      if (f) fclose(f);
    }
    if (!ok) {
      unlink(full);
      d->st.deleted_bad++;
      continue;
    }
    /* used: the modification time orders what came from earlier runs (all older than this run's) */
    if (put_entry(d, h, file_bytes(d), (uint64_t)sb.st_mtime) != 0) {
      closedir(dir);
      snprintf(err, errlen, "--cache-dir: out of memory indexing %s", d->dir);
      return HEED_E_NOMEM;
    }
    if ((uint64_t)sb.st_mtime > d->tick) d->tick = (uint64_t)sb.st_mtime;
  }
  closedir(dir);
  make_room(d, 0);
  return HEED_OK;
}

heed_status srv_disk_open(const srv_disk_config *cfg, srv_disk **out, char *err, size_t errlen) {
  *out = NULL;
  if (!cfg->dir || !*cfg->dir || !cfg->block_len || !cfg->payload_bytes) {
    snprintf(err, errlen, "--cache-dir: no folder given");
    return HEED_E_INVALID;
  }
  srv_disk *d = calloc(1, sizeof *d);
  if (!d) return HEED_E_NOMEM;
  d->cfg = *cfg;
  d->cfg.dir = NULL;
  size_t n = strlen(cfg->dir) + 24;
  d->dir = malloc(n);
  if (!d->dir) return free(d), HEED_E_NOMEM;
  snprintf(d->dir, n, "%s/%016llx", cfg->dir, (unsigned long long)cfg->key);
  if (mkdirs(d->dir) != 0) {
    snprintf(err, errlen, "--cache-dir: cannot make %s: %s", d->dir, strerror(errno));
    srv_disk_close(d);
    return HEED_E_IO;
  }
  heed_status st = scan(d, err, errlen);
  if (st != HEED_OK) {
    srv_disk_close(d);
    return st;
  }
  *out = d;
  return HEED_OK;
}

void srv_disk_close(srv_disk *d) {
  if (!d) return;
  free(d->tab), free(d->dir), free(d->path);
  free(d);
}

int srv_disk_has(const srv_disk *d, uint64_t h) { return d && find(d, h) != NULL; }

heed_status srv_disk_put(srv_disk *d, uint64_t h, uint64_t parent, unsigned index, const int32_t *tokens,
                         const void *payload) {
  disk_entry *e = find(d, h);
  if (e) {
    e->used = ++d->tick;
    return HEED_OK;
  }
  const uint64_t fb = file_bytes(d);
  if (fb > d->cfg.limit) return HEED_E_RANGE; /* a block bigger than the whole tier */
  make_room(d, fb);
  disk_header x = {.version = DISK_VERSION, .block_len = d->cfg.block_len, .key = d->cfg.key, .hash = h,
                   .parent = parent, .index = index, .payload_bytes = d->cfg.payload_bytes};
  memcpy(x.magic, DISK_MAGIC, 8);
  x.payload_sum = XXH3_64bits(payload, d->cfg.payload_bytes);
  x.header_sum = header_sum(&x, tokens, d->cfg.block_len);
  const char *tmp = name_of(d, h, 1);
  if (!tmp) return HEED_E_NOMEM;
  char *tmp_copy = strdup(tmp);
  if (!tmp_copy) return HEED_E_NOMEM;
  FILE *f = fopen(tmp_copy, "wb");
  int ok = f && fwrite(&x, sizeof x, 1, f) == 1 && fwrite(tokens, sizeof *tokens, d->cfg.block_len, f) == d->cfg.block_len &&
           fwrite(payload, 1, d->cfg.payload_bytes, f) == d->cfg.payload_bytes;
  if (f && fclose(f) != 0) ok = 0;
  const char *final = ok ? name_of(d, h, 0) : NULL;
  if (!final || rename(tmp_copy, final) != 0) {
    unlink(tmp_copy);
    free(tmp_copy);
    d->st.write_errors++;
    return HEED_E_IO;
  }
  free(tmp_copy);
  if (put_entry(d, h, fb, ++d->tick) != 0) return HEED_E_NOMEM;
  d->st.written++;
  return HEED_OK;
}

int srv_disk_get(srv_disk *d, uint64_t h, uint64_t parent, const int32_t *tokens, void *payload) {
  disk_entry *e = find(d, h);
  if (!e) return 0;
  const char *p = name_of(d, h, 0);
  FILE *f = p ? fopen(p, "rb") : NULL;
  disk_header x;
  const unsigned bl = d->cfg.block_len;
  int32_t *tok = malloc(bl * sizeof *tok);
  if (!tok) { /* out of memory: not the file's fault */
    if (f) fclose(f);
    return 0;
  }
  /* the file as written: a header for this block, its tokens, the payload, nothing after */
  const int sound = f && tok && fread(&x, sizeof x, 1, f) == 1 && header_ok(d, &x, h) && fread(tok, sizeof *tok, bl, f) == bl &&
                    x.header_sum == header_sum(&x, tok, bl);
  /* a sound file for other tokens or another parent: a hash collision, not the file's fault; not used */
  const int collision = sound && (x.parent != parent || memcmp(tok, tokens, bl * sizeof *tok));
  const int ok = sound && !collision && fread(payload, 1, d->cfg.payload_bytes, f) == d->cfg.payload_bytes &&
                 fgetc(f) == EOF && XXH3_64bits(payload, d->cfg.payload_bytes) == x.payload_sum;
  if (f) fclose(f);
  free(tok);
  if (!ok) {
    if (collision) return 0;
    delete_file(d, h, 1);
    return -1;
  }
  e = find(d, h);
  if (e) e->used = ++d->tick;
  d->st.read++;
  return 1;
}

void srv_disk_get_stats(const srv_disk *d, srv_disk_stats *s) {
  memset(s, 0, sizeof *s);
  if (!d) return;
  *s = d->st;
  s->files = d->n;
  s->bytes = d->bytes;
  s->limit = d->cfg.limit;
}

heed_status srv_disk_model_key(const char *const *paths, unsigned n_paths, const char *kv_layout, uint64_t *key,
                               char *err, size_t errlen) {
  XXH3_state_t *s = XXH3_createState();
  char *buf = malloc(1 << 22);
  if (!s || !buf) {
    XXH3_freeState(s), free(buf);
    return HEED_E_NOMEM;
  }
  XXH3_64bits_reset(s);
  heed_status st = HEED_OK;
  for (unsigned i = 0; i < n_paths && st == HEED_OK; i++) {
    FILE *f = fopen(paths[i], "rb");
    if (!f) {
      snprintf(err, errlen, "--cache-dir: cannot read the model file %s: %s", paths[i], strerror(errno));
      st = HEED_E_IO;
      break;
    }
    size_t n;
    while ((n = fread(buf, 1, 1 << 22, f)) > 0) XXH3_64bits_update(s, buf, n);
    if (ferror(f)) {
      snprintf(err, errlen, "--cache-dir: reading the model file %s failed", paths[i]);
      st = HEED_E_IO;
    }
    fclose(f);
  }
  XXH3_64bits_update(s, kv_layout, strlen(kv_layout));
  *key = nonzero(XXH3_64bits_digest(s));
  XXH3_freeState(s);
  free(buf);
  return st;
}
