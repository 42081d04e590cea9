from jinshui.risk.main import build

build().run()
