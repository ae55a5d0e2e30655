/* bench/bench_report.c - --compare and --plot of `heed bench`. JSON is read
 * with cJSON; plots are drawn by gnuplot (pngcairo when it has it, else png). */
#include "bench/bench_report.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char *slurp(const char *path, char *msg, size_t cap) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    snprintf(msg, cap, "cannot read %s", path);
    return NULL;
  }
  fseek(f, 0, SEEK_END);
  long len = ftell(f);
  fseek(f, 0, SEEK_SET);
  if (len < 0 || len > (64l << 20)) {
    fclose(f);
    snprintf(msg, cap, "%s: not a bench JSON file (%ld bytes)", path, len);
    return NULL;
  }
  char *t = malloc((size_t)len + 1);
  size_t got = t ? fread(t, 1, (size_t)len, f) : 0;
  fclose(f);
  if (!t || got != (size_t)len) {
    free(t);
    snprintf(msg, cap, "cannot read %s", path);
    return NULL;
  }
  t[len] = 0;
  return t;
}

static int get_str(const cJSON *o, const char *k, char *dst, size_t cap) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
  if (!cJSON_IsString(v)) return -1;
  snprintf(dst, cap, "%s", v->valuestring);
  return 0;
}

static int get_num(const cJSON *o, const char *k, double *dst) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
  if (!cJSON_IsNumber(v)) return -1;
  *dst = v->valuedouble;
  return 0;
}

int heed_bench_load_json(const char *path, heed_bench_result **out, int *n, char *msg, size_t cap) {
  *out = NULL, *n = 0;
  char *t = slurp(path, msg, cap);
  if (!t) return -1;
  cJSON *root = cJSON_Parse(t);
  if (!root) {
    const char *at = cJSON_GetErrorPtr();
    snprintf(msg, cap, "%s is not JSON (a parse error at byte %ld)", path, at && at >= t ? (long)(at - t) : 0l);
    free(t);
    return -1;
  }
  free(t);
  const cJSON *schema = cJSON_GetObjectItemCaseSensitive(root, "schema"), *res = cJSON_GetObjectItemCaseSensitive(root, "results");
  if (!cJSON_IsString(schema) || strcmp(schema->valuestring, "heed-bench/1") != 0 || !cJSON_IsArray(res)) {
    snprintf(msg, cap, "%s is not a heed bench result (want \"schema\": \"heed-bench/1\" and a \"results\" array)", path);
    cJSON_Delete(root);
    return -1;
  }
  int m = cJSON_GetArraySize(res);
  heed_bench_result *r = calloc(m ? (size_t)m : 1, sizeof *r);
  if (!r) {
    cJSON_Delete(root);
    snprintf(msg, cap, "out of memory reading %s", path);
    return -1;
  }
  int i = 0;
  const cJSON *x;
  cJSON_ArrayForEach(x, res) {
    heed_bench_result *y = &r[i];
    double rep = 0;
    char lim[32];
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(x, "shape");
    char *shs = cJSON_IsObject(sh) ? cJSON_PrintUnformatted(sh) : NULL;
    int bad = get_str(x, "name", y->name, sizeof y->name) || get_str(x, "backend", y->backend, sizeof y->backend) ||
              get_str(x, "isa", y->isa, sizeof y->isa) || get_str(x, "dtype", y->dtype, sizeof y->dtype) ||
              get_num(x, "ms_median", &y->ms_median) || get_num(x, "ms_min", &y->ms_min) || get_num(x, "ms_max", &y->ms_max) ||
              get_num(x, "repeats", &rep) || get_num(x, "limit_value", &y->limit_value) ||
              get_num(x, "achieved_value", &y->achieved_value) || get_num(x, "fraction", &y->fraction) ||
              get_str(x, "limit_kind", lim, sizeof lim) || !shs || !(y->ms_median > 0);
    if (shs) snprintf(y->shape_json, sizeof y->shape_json, "%s", shs);
    free(shs);
    y->limit_kind = HEED_LIMIT_COUNT;
    for (int k = 0; k < HEED_LIMIT_COUNT; k++)
      if (strcmp(lim, heed_limit_name((heed_limit_kind)k)) == 0) y->limit_kind = (heed_limit_kind)k;
    if (bad || y->limit_kind == HEED_LIMIT_COUNT) {
      snprintf(msg, cap, "%s: results[%d] lacks a field of the schema (bench/README.md) or has a bad value", path, i);
      free(r);
      cJSON_Delete(root);
      return -1;
    }
    y->repeats = (int)rep;
    i++;
  }
  cJSON_Delete(root);
  *out = r, *n = m;
  return 0;
}

/* Same shape: compared as JSON values, so spacing and number spelling do not matter. */
static int same_shape(const char *a, const char *b) {
  cJSON *x = cJSON_Parse(a), *y = cJSON_Parse(b);
  int same = x && y && cJSON_Compare(x, y, 1);
  cJSON_Delete(x), cJSON_Delete(y);
  return same;
}

static int shape_num(const char *shape, const char *key, double *v) {
  cJSON *x = cJSON_Parse(shape);
  const cJSON *c = x ? cJSON_GetObjectItemCaseSensitive(x, key) : NULL;
  int ok = cJSON_IsNumber(c);
  if (ok) *v = c->valuedouble;
  cJSON_Delete(x);
  return ok;
}

int heed_bench_compare(const heed_bench_result *old, int n_old, const heed_bench_result *cur, int n_cur, double threshold,
                       FILE *f, char *msg, size_t cap) {
  int matched = 0, regress = 0;
  for (int i = 0; i < n_cur; i++) {
    const heed_bench_result *c = &cur[i];
    for (int j = 0; j < n_old; j++) {
      const heed_bench_result *o = &old[j];
      if (strcmp(c->name, o->name) || strcmp(c->backend, o->backend) || strcmp(c->dtype, o->dtype) ||
          !same_shape(c->shape_json, o->shape_json))
        continue;
      if (!matched)
        fprintf(f, "%-32s %12s %12s %9s  (medians; new/old > %.2f is a regression)\n", "case", "old ms", "new ms", "new/old",
                1 + threshold);
      matched++;
      double ratio = c->ms_median / o->ms_median;
      const char *verdict = ratio > 1 + threshold ? "REGRESSION" : ratio < 1 / (1 + threshold) ? "faster" : "same";
      regress += ratio > 1 + threshold;
      char label[96];
      double depth;
      if (shape_num(c->shape_json, "depth", &depth)) /* model cases: the name alone repeats */
        snprintf(label, sizeof label, "%s %s depth %.0f", c->name, c->dtype, depth);
      else
        snprintf(label, sizeof label, "%s", c->name);
      fprintf(f, "%-32s %12.4f %12.4f %9.3f  %s\n", label, o->ms_median, c->ms_median, ratio, verdict);
      break;
    }
  }
  if (!matched) {
    snprintf(msg, cap, "no case of this run is in the earlier file (%d cases there, %d here; same name, backend, dtype and shape needed)",
             n_old, n_cur);
    return -1;
  }
  fprintf(f, "%d of %d cases compared, %d regression%s beyond %.0f%%\n", matched, n_cur, regress, regress == 1 ? "" : "s",
          threshold * 100);
  return regress;
}

/* ---- plots ---- */

static int shape_ctx(const char *shape, double *ctx) {
  cJSON *x = cJSON_Parse(shape);
  const cJSON *c = x ? cJSON_GetObjectItemCaseSensitive(x, "ctx") : NULL;
  int ok = cJSON_IsNumber(c);
  if (ok) *ctx = c->valuedouble;
  cJSON_Delete(x);
  return ok;
}

/* the line a decode case belongs to: its KV format, or the baseline library */
static void line_of(const heed_bench_result *r, char *dst, size_t cap) {
  size_t n = strlen(r->name);
  if (strcmp(r->backend, "onednn") == 0 || strcmp(r->backend, "clblast") == 0)
    snprintf(dst, cap, "%s (unfused, f32)", r->backend);
  else if (n > 10 && strcmp(r->name + n - 10, ".reference") == 0)
    snprintf(dst, cap, "%s, reference (scalar)", r->dtype);
  else
    snprintf(dst, cap, "%s", r->dtype);
}

/* Runs gnuplot on the script sp (in dir); 0, or -1 with gnuplot's error in msg. */
static int run_gnuplot(const char *dir, const char *sp, char *msg, size_t cap) {
  char cmd[256], ep[64];
  snprintf(ep, sizeof ep, "%s/err", dir);
  snprintf(cmd, sizeof cmd, "gnuplot '%s' 2>'%s'", sp, ep);
  int st = system(cmd);
  int rc = 0;
  if (st == -1 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
    char err[200] = "";
    FILE *e = fopen(ep, "r");
    if (e) {
      size_t got = fread(err, 1, sizeof err - 1, e);
      err[got] = 0;
      fclose(e);
      for (char *c = err; *c; c++)
        if (*c == '\n') *c = ' ';
    }
    snprintf(msg, cap, "gnuplot failed%s%s%s", WIFEXITED(st) && WEXITSTATUS(st) == 127 ? " (not installed? scripts/setup.sh installs gnuplot-nox)" : "",
             err[0] ? ": " : "", err);
    rc = -1;
  }
  unlink(ep);
  return rc;
}

int heed_bench_plot(const heed_bench_result *r, int n, const char *title, const char *png, char *msg, size_t cap) {
  char dir[] = "/tmp/heed-plot-XXXXXX";
  if (!mkdtemp(dir)) {
    snprintf(msg, cap, "cannot make a temporary directory for the plot");
    return -1;
  }
  /* one data file per line: ctx fraction ms floor_ms */
  char lines[16][48];
  int nl = 0;
  for (int i = 0; i < n; i++) {
    double ctx;
    if (strncmp(r[i].name, "decode.", 7) != 0 || !shape_ctx(r[i].shape_json, &ctx)) continue;
    size_t len = strlen(r[i].name); /* of the reference kernels, f16's line only */
    if (len > 10 && strcmp(r[i].name + len - 10, ".reference") == 0 && strcmp(r[i].dtype, "f16") != 0) continue;
    char l[48];
    line_of(&r[i], l, sizeof l);
    int k = 0;
    while (k < nl && strcmp(lines[k], l)) k++;
    if (k == nl) {
      if (nl == 16) continue;
      snprintf(lines[nl++], sizeof lines[0], "%s", l);
    }
    char p[64];
    snprintf(p, sizeof p, "%s/%d.dat", dir, k);
    FILE *d = fopen(p, "a");
    if (!d) continue;
    /* the floor: the bytes this case reads (achieved x time) at the probed limit */
    double floor_ms = r[i].achieved_value * r[i].ms_median / r[i].limit_value;
    fprintf(d, "%.0f %.6g %.6g %.6g\n", ctx, r[i].fraction, r[i].ms_median, floor_ms);
    fclose(d);
  }
  if (!nl) {
    snprintf(msg, cap, "nothing to plot: no decode case with a context length in these results (run the attention suite)");
    rmdir(dir);
    return -1;
  }
  char sp[64];
  snprintf(sp, sizeof sp, "%s/plot.gp", dir);
  FILE *g = fopen(sp, "w");
  if (!g) {
    snprintf(msg, cap, "cannot write the gnuplot script");
    return -1;
  }
  fprintf(g,
          "set terminal push\n"
          "if (strstrt(GPVAL_TERMINALS, 'pngcairo') > 0) { set terminal pngcairo size 1400,560 font ',10' } "
          "else { set terminal png size 1400,560 }\n"
          "set output '%s'\n"
          "set multiplot layout 1,2 title '%s'\n"
          "set logscale x 2\nset key left bottom\nset grid\nset xlabel 'context length (tokens)'\n"
          "set ylabel 'fraction of the probed limit'\nset yrange [0:*]\nset title 'decode: fraction of read bandwidth'\n",
          png, title);
  fprintf(g, "plot ");
  for (int k = 0; k < nl; k++) fprintf(g, "%s'%s/%d.dat' using 1:2 with linespoints title '%s'", k ? ", " : "", dir, k, lines[k]);
  fprintf(g, "\nset ylabel 'ms (median)'\nset logscale y\nset yrange [*:*]\nset key left top\n"
             "set title 'decode: time, and the floor the probed bandwidth sets (dashed)'\nplot ");
  for (int k = 0; k < nl; k++)
    fprintf(g, "%s'%s/%d.dat' using 1:3 with linespoints lc %d title '%s', '%s/%d.dat' using 1:4 with lines dt 2 lc %d notitle",
            k ? ", " : "", dir, k, k + 1, lines[k], dir, k, k + 1);
  fprintf(g, "\nunset multiplot\n");
  fclose(g);
  int rc = run_gnuplot(dir, sp, msg, cap);
  for (int k = 0; k < nl; k++) {
    char p[64];
    snprintf(p, sizeof p, "%s/%d.dat", dir, k);
    unlink(p);
  }
  unlink(sp), rmdir(dir);
  return rc;
}


/* ---- the model plot ---- */

int heed_bench_plot_model(const heed_bench_result *r, int n, const char *title, const char *png, char *msg, size_t cap) {
  char dir[] = "/tmp/heed-plot-XXXXXX";
  if (!mkdtemp(dir)) {
    snprintf(msg, cap, "cannot make a temporary directory for the plot");
    return -1;
  }
  /* per panel (0 prefill, 1 decode) and KV format a data file: depth tok/s limit_tok/s */
  char kvs[8][16];
  int nk = 0, have[2] = {0, 0};
  for (int i = 0; i < n; i++) {
    int panel = strcmp(r[i].name, "model.prefill") == 0 ? 0 : strcmp(r[i].name, "model.decode") == 0 ? 1 : -1;
    double depth;
    if (panel < 0 || !shape_num(r[i].shape_json, "depth", &depth) || !(r[i].fraction > 0)) continue;
    int k = 0;
    while (k < nk && strcmp(kvs[k], r[i].dtype)) k++;
    if (k == nk) {
      if (nk == 8) continue;
      snprintf(kvs[nk++], sizeof kvs[0], "%s", r[i].dtype);
    }
    char p[64];
    snprintf(p, sizeof p, "%s/%d-%d.dat", dir, panel, k);
    FILE *d = fopen(p, "a");
    if (!d) continue;
    const double tps = 1e3 / r[i].ms_median;
    fprintf(d, "%.0f %.6g %.6g\n", depth, tps, tps / r[i].fraction);
    fclose(d);
    have[panel] = 1;
  }
  if (!have[0] && !have[1]) {
    snprintf(msg, cap, "nothing to plot: no model.prefill or model.decode case in these results");
    rmdir(dir);
    return -1;
  }
  char sp[64];
  snprintf(sp, sizeof sp, "%s/plot.gp", dir);
  FILE *g = fopen(sp, "w");
  if (!g) {
    snprintf(msg, cap, "cannot write the gnuplot script");
    rmdir(dir);
    return -1;
  }
  fprintf(g,
          "if (strstrt(GPVAL_TERMINALS, 'pngcairo') > 0) { set terminal pngcairo size 1400,560 font ',10' } "
          "else { set terminal png size 1400,560 }\n"
          "set termoption noenhanced\nset output '%s'\nset multiplot layout 1,2 title '%s'\n"
          "set grid\nset key right top\nset xlabel 'context depth (tokens)'\nset ylabel 'tokens/s (median)'\n"
          "set yrange [0:*]\nset offsets graph 0.02, graph 0.02, 0, 0\n",
          png, title);
  static const char *titles[2] = {"prefill: tok/s, and the FMA-peak limit (dashed)",
                                  "decode: tok/s, and the read-bandwidth limit (dashed)"};
  for (int panel = 0; panel < 2; panel++) {
    fprintf(g, "set title '%s'\nplot ", titles[panel]);
    int first = 1;
    for (int k = 0; k < nk; k++) {
      char p[64];
      snprintf(p, sizeof p, "%s/%d-%d.dat", dir, panel, k);
      if (access(p, R_OK) != 0) continue;
      fprintf(g, "%s'%s' using 1:2 with linespoints lc %d title '%s', '%s' using 1:3 with lines dt 2 lc %d notitle",
              first ? "" : ", ", p, k + 1, kvs[k], p, k + 1);
      first = 0;
    }
    if (first) fprintf(g, "NaN notitle");
    fprintf(g, "\n");
  }
  fprintf(g, "unset multiplot\n");
  fclose(g);
  int rc = run_gnuplot(dir, sp, msg, cap);
  for (int panel = 0; panel < 2; panel++)
    for (int k = 0; k < nk; k++) {
      char p[64];
      snprintf(p, sizeof p, "%s/%d-%d.dat", dir, panel, k);
      unlink(p);
    }
  unlink(sp), rmdir(dir);
  return rc;
}
