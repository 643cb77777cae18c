"""python -m minillm serve --model DIR [...]: the OpenAI-compatible server (minillm.server)."""
import sys


def main(argv):
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m minillm serve --model DIR [--host 127.0.0.1] [--port 8000] [--api-key KEY] ...\n"
              "       python -m minillm serve --help   (all options)")
        return 0 if argv else 2
    if argv[0] != "serve":
        print(f"error: unknown command {argv[0]!r} (commands: serve)", file=sys.stderr)
        return 2
    try:
        from .server import serve
    except ImportError as e:
        print(f"error: the server needs fastapi, uvicorn and jinja2 (scripts/setup.sh installs them): {e}",
              file=sys.stderr)
        return 1
    serve(argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
