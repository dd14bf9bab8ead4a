# Databases for the tests of the fleet database (tukar collect, tukar report): a real PostgreSQL
# server of the tests' own (initdb into a temporary directory, `postgres` on a free loopback port,
# stopped at the end), a fresh database in it per test, and SQLite files. Missing PostgreSQL fails
# the tests with the command that installs it: nothing is skipped.
#
#     from databases import postgres_server, postgres_url, db_url  # noqa: F401 (fixtures)
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid

import pytest

from tukar_tools.broker import free_port

PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"  # Debian's packages keep the server off PATH


def postgres_bin(name):
    """Path of a PostgreSQL server program ($TUKAR_PG_BIN, PATH, else Debian's newest), or None."""
    own = os.environ.get("TUKAR_PG_BIN")
    if own and os.access(os.path.join(own, name), os.X_OK):
        return os.path.join(own, name)
    found = shutil.which(name)
    if found:
        return found

    def version(d):
        v = os.path.basename(os.path.dirname(d))
        return int(v) if v.isdigit() else 0

    for d in sorted(glob.glob(PG_BIN_GLOB), key=version, reverse=True):
        p = os.path.join(d, name)
        if os.access(p, os.X_OK):
            return p
    return None


def require_postgres():
    missing = [n for n in ("initdb", "postgres") if postgres_bin(n) is None]
    if missing:
        pytest.fail("PostgreSQL is not installed (%s not found on PATH, in $TUKAR_PG_BIN or %s):"
                    " apt-get install postgresql (.ci/run installs it)"
                    % (" and ".join(missing), PG_BIN_GLOB), pytrace=False)


def _server_user():
    """The server refuses to run as root: as root, run it as `postgres` (Debian's package makes
    that user), else `nobody`. None when already another user."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            pass
    raise RuntimeError("running as root and no postgres or nobody user to run PostgreSQL as")


class Postgres:
    """A PostgreSQL server in a temporary directory (/tmp, which its user can reach), on a free
    port of 127.0.0.1, its unix socket in that directory, trust authentication for the superuser
    `tukar`, durability off (fsync, synchronous_commit: a test server)."""

    SUPERUSER = "tukar"

    def __init__(self):
        self.port = free_port()
        self.dir = None
        self.proc = None
        self.user = _server_user()

    def _run_as(self):
        if self.user is None:
            return {}
        return {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}

    def _env(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C", HOME=self.dir, TZ="UTC")
        return env

    @property
    def log(self):
        return os.path.join(self.dir, "postgres.log")

    def start(self, timeout=60.0):
        """Start the server: a new cluster the first time, the same one after stop(keep=True)."""
        require_postgres()
        if self.dir is None:
            self._initdb(timeout)
        data, sock = os.path.join(self.dir, "data"), os.path.join(self.dir, "sock")
        cmd = [postgres_bin("postgres"), "-D", data, "-p", str(self.port), "-k", sock,
               "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
               "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
               "-c", "max_connections=60", "-c", "shared_buffers=16MB"]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=self._env(),
                                         start_new_session=True, **self._run_as())
        end = time.monotonic() + timeout
        last = None
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                code, text = self.proc.returncode, self._log_tail()
                self.stop()
                raise RuntimeError("postgres exited with %s: %s" % (code, text))
            try:
                self.execute("SELECT 1")
                return self
            except Exception as e:  # not accepting connections yet
                last = e
                time.sleep(0.1)
        text = self._log_tail()
        self.stop()
        raise RuntimeError("postgres did not accept connections in %.0f s (%s): %s"
                           % (timeout, last, text))

    def _initdb(self, timeout):
        self.dir = tempfile.mkdtemp(prefix="tukar-pg-")
        sock = os.path.join(self.dir, "sock")
        os.mkdir(sock)
        if self.user is not None:
            for p in (self.dir, sock):
                os.chown(p, self.user.pw_uid, self.user.pw_gid)
        out = subprocess.run([postgres_bin("initdb"), "-D", os.path.join(self.dir, "data"),
                              "-U", self.SUPERUSER, "--auth=trust", "--encoding=UTF8",
                              "--no-locale", "--no-sync"],
                             env=self._env(), capture_output=True, text=True, timeout=timeout,
                             **self._run_as())
        if out.returncode != 0:
            self.stop()
            raise RuntimeError("initdb failed (%d): %s" % (out.returncode, out.stdout + out.stderr))

    def _log_tail(self):
        try:
            with open(self.log) as f:
                return f.read()[-2000:]
        except OSError:
            return ""

    def url(self, dbname="postgres"):
        return "postgresql://%s@127.0.0.1:%d/%s" % (self.SUPERUSER, self.port, dbname)

    def execute(self, sql, dbname="postgres"):
        import psycopg

        with psycopg.connect(self.url(dbname), autocommit=True, connect_timeout=5) as conn:
            cur = conn.execute(sql)
            return cur.fetchall() if cur.description else None

    def create_database(self, name=None):
        """A new empty database; returns its URL."""
        name = name or "t_" + uuid.uuid4().hex[:12]
        self.execute('CREATE DATABASE "%s"' % name)
        return self.url(name)

    def stop(self, keep=False):
        """Stop the server; keep=True keeps its data and port for start() again (an outage)."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)  # the server's fast shutdown
                try:
                    self.proc.wait(15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
            self.proc = None
        if self.dir and not keep:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


@pytest.fixture(scope="session")
def postgres_server():
    """One PostgreSQL server for the whole run (each xdist worker starts its own)."""
    pg = Postgres().start()
    yield pg
    pg.stop()


@pytest.fixture
def postgres_url(postgres_server):
    """A fresh, empty database of the tests' server, as a postgresql:// URL."""
    return postgres_server.create_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A fresh fleet database on each backend: a SQLite file, then a PostgreSQL database."""
    if request.param == "sqlite":
        return "sqlite:///" + str(tmp_path / "fleet.sqlite")
    return request.getfixturevalue("postgres_server").create_database()
