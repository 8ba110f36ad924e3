"""Command-line helpers shared by the thin jobs in jobs/."""

import argparse


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad command line gives one line on stderr (exit status 2), not the whole usage text."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")
