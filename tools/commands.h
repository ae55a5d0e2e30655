/* tools/commands.h - the `heed` subcommands that live in files of their own. */
#ifndef HEED_TOOLS_COMMANDS_H
#define HEED_TOOLS_COMMANDS_H

#include <stdint.h>
#include <stdio.h>

/* heed model info FILE [--json] | heed model dump FILE. argv[0] is "info" or
 * "dump". Returns the exit status: 0, 1 (the file is refused), 2 (usage). */
int heed_cmd_model(int argc, char **argv);

/* heed tokenize MODEL (-p TEXT | -f FILE | --chat REQUEST.json) [options];
 * argv[0] is the first argument after "tokenize". Exit status as above. */
int heed_cmd_tokenize(int argc, char **argv);

/* heed run MODEL ... and heed perplexity MODEL -f FILE ...; argv[0] is the
 * first argument after the command's name. Exit status as above. */
int heed_cmd_run(int argc, char **argv);
int heed_cmd_perplexity(int argc, char **argv);

/* heed serve MODEL [options]: the HTTP server (tools/serve_cmd.c); heed serve -h. */
int heed_cmd_serve(int argc, char **argv);

/* p[0..n) as a JSON string: escaped, bytes that are not UTF-8 as U+FFFD. */
void heed_cli_json_str(FILE *f, const char *p, uint64_t n);

#endif
