"""Configuration: the one table of settings, where each is read from (command line, ``-o``,
a config-file profile), and where the API token comes from."""
