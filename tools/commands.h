/* tools/commands.h - the `heed` subcommands that live in files of their own. */
#ifndef HEED_TOOLS_COMMANDS_H
#define HEED_TOOLS_COMMANDS_H

/* heed model info FILE [--json] | heed model dump FILE. argv[0] is "info" or
 * "dump". Returns the exit status: 0, 1 (the file is refused), 2 (usage). */
int heed_cmd_model(int argc, char **argv);

#endif
