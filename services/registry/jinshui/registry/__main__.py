from jinshui.registry.main import build

build().run()
