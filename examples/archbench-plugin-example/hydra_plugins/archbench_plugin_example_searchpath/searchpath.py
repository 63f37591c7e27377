"""Adds this plugin's conf/ to Hydra's search path, so `arch=mingru` composes."""
from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class ArchbenchPluginExampleSearchPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        search_path.append(provider="archbench-plugin-example",
                           path="pkg://archbench_plugin_example/conf")
