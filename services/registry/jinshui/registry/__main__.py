from jinshui.registry.main import build

if __name__ == "__main__":  # the import's worker processes import this module too
    build().run()
