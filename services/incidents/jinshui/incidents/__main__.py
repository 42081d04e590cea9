from jinshui.incidents.main import build

build().run()
