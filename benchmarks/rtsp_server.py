"""A real RTSP server for the tests and benchmarks, on loopback: GStreamer's gst-rtsp-server serving an
MP4 file's H.264 track at its own rate, as a camera would; each client gets the file from its start.

    /usr/bin/python3 benchmarks/rtsp_server.py PORT FILE    # then rtsp://127.0.0.1:PORT/camera

Run by Debian's Python (python3-gi, gir1.2-gst-rtsp-server-1.0, gstreamer1.0-plugins-good), not the
project's venv. Stops on SIGTERM.
"""

import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

Gst.init(None)
port, path = sys.argv[1], sys.argv[2]
server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(port)
factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch(f'( filesrc location="{path}" ! qtdemux ! rtph264pay name=pay0 pt=96 config-interval=1 )')
factory.set_shared(False)
server.get_mount_points().add_factory("/camera", factory)
server.attach(None)
loop = GLib.MainLoop()
GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, loop.quit)
print("serving", flush=True)
loop.run()
