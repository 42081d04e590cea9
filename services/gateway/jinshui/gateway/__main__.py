from jinshui.gateway.main import build

build().run()
