// strata: the command line. Parsing lives in cli.cpp; each subcommand in its own file.
namespace strata {
int cli_main(int argc, char** argv);
}

int main(int argc, char** argv) { return strata::cli_main(argc, argv); }
