// The tests run where the broker does (Linux): Unix file modes are the point.
#pragma warning disable CA1416
using System.Diagnostics;
using System.Text;
using P11Proxy.Broker;
using static P11Proxy.Pkcs11.Pkcs11Constants;

namespace P11Proxy.Broker
{
    /// <summary>The broker's exception (its home, Backend.cs, is not compiled into the tests).</summary>
    internal sealed class BrokerException(string message) : Exception(message);
}

namespace P11Proxy.UnitTests.Broker
{
    /// <summary>--pin, --protected-login, --login-on-arrival: parsing, start-up refusals, and reading each source.</summary>
    [TestFixture]
    public class PinSourceTests
    {
        private string _dir = "";

        [SetUp]
        public void MakeDirectory()
        {
            _dir = Directory.CreateTempSubdirectory("p11proxy-pins-").FullName;
        }

        [TearDown]
        public void RemoveDirectory() => Directory.Delete(_dir, recursive: true);

        private string PinFile(string content, UnixFileMode mode = UnixFileMode.UserRead | UnixFileMode.UserWrite)
        {
            string path = Path.Combine(_dir, $"pin{Guid.NewGuid():N}");
            File.WriteAllText(path, content);
            File.SetUnixFileMode(path, mode);
            return path;
        }

        private static string Text(PinBuffer pin)
        {
            unsafe { return Encoding.ASCII.GetString(new ReadOnlySpan<byte>(pin.Bytes, pin.Length)); }
        }

        private static BrokerException Refused(Action action) => Assert.Throws<BrokerException>(action)!;

        [Test]
        public void EachSourceKindParses()
        {
            var file = HeldPinConfiguration.ParsePin("pkcs11:token=web;serial=42?pin-source=file:/etc/p11proxy/web.pin");
            Assert.That(file.Source, Is.TypeOf<FilePinSource>());
            Assert.That(((FilePinSource)file.Source).Path, Is.EqualTo("/etc/p11proxy/web.pin"));
            Assert.That(file.Token.Uris[0], Is.EquivalentTo(new Dictionary<string, string> { ["token"] = "web", ["serial"] = "42" }));
            Assert.That(((FilePinSource)HeldPinConfiguration.ParsePin("pkcs11:token=a?pin-source=file:///etc/a%20b.pin").Source).Path, Is.EqualTo("/etc/a b.pin"));
            var credential = HeldPinConfiguration.ParsePin("pkcs11:token=web?pin-source=credential:web-pin");
            Assert.That(((CredentialPinSource)credential.Source).Name, Is.EqualTo("web-pin"));
            var program = HeldPinConfiguration.ParsePin("pkcs11:token=web?pin-source=|/usr/bin/ssh-askpass%20'PIN%20of%20web'%20--x=\"a%20b\"%20c\\%20d");
            Assert.That(((ProgramPinSource)program.Source).Argv, Is.EqualTo(new[] { "/usr/bin/ssh-askpass", "PIN of web", "--x=a b", "c d" }));
        }

        [TestCase("token=web?pin-source=file:/x", "is not a PKCS#11 URI")]
        [TestCase("pkcs11:token=web", "has no ?pin-source")]
        [TestCase("pkcs11:?pin-source=file:/x", "selects every token")]
        [TestCase("pkcs11:token=web?pin-value=1234", "pin-value puts the PIN on the command line")]
        [TestCase("pkcs11:token=web?pin-source=file:/x&pin-source=file:/y", "pin-source is given twice")]
        [TestCase("pkcs11:token=web?module-name=x", "query attribute 'module-name' is not understood")]
        [TestCase("pkcs11:token=web?pin-source=file:relative.pin", "not an absolute path")]
        [TestCase("pkcs11:token=web?pin-source=credential:../etc/shadow", "is not a credential name")]
        [TestCase("pkcs11:token=web?pin-source=credential:", "is not a credential name")]
        [TestCase("pkcs11:token=web?pin-source=|", "names no program")]
        [TestCase("pkcs11:token=web?pin-source=|/bin/ask%20'unclosed", "unclosed ' quote")]
        [TestCase("pkcs11:token=web?pin-source=https://x/pin", "is not file:/PATH, credential:NAME or |PROGRAM")]
        [TestCase("pkcs11:token=web?pin-source=file:/a%zz", "bad percent-encoding")]
        [TestCase("pkcs11:id=%01?pin-source=file:/x", "attribute 'id' does not select tokens")]
        public void BadPinOptionsAreRefusedSayingWhy(string uri, string reason)
        {
            var refusal = Refused(() => HeldPinConfiguration.ParsePin(uri));
            Assert.That(refusal.Message, Does.Contain(reason));
            Assert.That(refusal.Message, Does.Not.Contain("1234"), "a refusal never repeats a PIN value");
        }

        [Test]
        public void APolicyLineNeedsAPinCoveringItsToken()
        {
            var config = HeldPinConfiguration.Parse([
                ("--pin", "pkcs11:token=web?pin-source=file:/x"),
                ("--login-on-arrival", "uid:33=pkcs11:token=web;serial=7"),
                ("--protected-login", "gid:0=pkcs11:token=web"),
                ("--askpass-timeout-ms", "2500"),
            ]);
            Assert.That(config.LoginOnArrival.Single().Peer, Is.EqualTo(new PeerSelector(false, 33, "uid:33")));
            Assert.That(config.ProtectedLogin.Single().Peer.IsGroup, Is.True);
            Assert.That(config.AskTimeoutMilliseconds, Is.EqualTo(2500));
            Assert.That(HeldPinConfiguration.Parse([]).AskTimeoutMilliseconds, Is.EqualTo(60_000));

            var uncovered = Refused(() => HeldPinConfiguration.Parse([
                ("--pin", "pkcs11:token=web;serial=7?pin-source=file:/x"),
                ("--login-on-arrival", "uid:33=pkcs11:token=web"), // also a token web of another serial
            ]));
            Assert.That(uncovered.Message, Does.Contain("--login-on-arrival uid:33=pkcs11:token=web: no --pin holds a PIN"));
            Assert.That(Refused(() => HeldPinConfiguration.Parse([("--protected-login", "uid:0=pkcs11:token=web")])).Message,
                Does.Contain("--protected-login"));
        }

        [TestCase("pkcs11:token=web", "does not name a peer")]
        [TestCase("user:1=pkcs11:token=web", "does not name a peer")]
        [TestCase("uid:=pkcs11:token=web", "does not name a peer")]
        [TestCase("uid:no-such-user-p11proxy=pkcs11:token=web", "no user named 'no-such-user-p11proxy'")]
        [TestCase("gid:no-such-group-p11proxy=pkcs11:token=web", "no group named 'no-such-group-p11proxy'")]
        [TestCase("uid:0=pkcs11:token=web?pin-source=file:/x", "takes no query")]
        [TestCase("uid:0=token=web", "is not a PKCS#11 URI")]
        public void BadPolicyLinesAreRefused(string line, string reason)
        {
            var refusal = Refused(() => HeldPinConfiguration.Parse([("--pin", "pkcs11:token=web?pin-source=file:/x"), ("--login-on-arrival", line)]));
            Assert.That(refusal.Message, Does.Contain(reason));
        }

        [TestCase("0")]
        [TestCase("99")]
        [TestCase("3600001")]
        [TestCase("soon")]
        public void AskPassTimeoutOutOfRangeIsRefused(string value) =>
            Assert.That(Refused(() => HeldPinConfiguration.Parse([("--askpass-timeout-ms", value)])).Message, Does.Contain("--askpass-timeout-ms takes a number from 100"));

        [Test]
        public void PeersMatchByUidOrByPrimaryOrSupplementaryGroup()
        {
            Assert.That(PeerSelector.Parse("uid:root", "--x"), Is.EqualTo(new PeerSelector(false, 0, "uid:root")));
            Assert.That(PeerSelector.Parse("gid:root", "--x").Id, Is.EqualTo(0u));
            var user = PeerSelector.Parse("uid:1000", "--x");
            Assert.That(user.Matches(1000, 5, []), Is.True);
            Assert.That(user.Matches(1001, 1000, [1000]), Is.False, "a uid line never matches by group");
            var group = PeerSelector.Parse("gid:33", "--x");
            Assert.That(group.Matches(1000, 33, []), Is.True, "primary group");
            Assert.That(group.Matches(1000, 5, [7, 33]), Is.True, "supplementary group");
            Assert.That(group.Matches(33, 5, [7]), Is.False, "a gid line never matches by uid");
        }

        [Test]
        public void FileSourceReadsTheFirstLineOnly()
        {
            foreach (var (content, pin) in new[] { ("739164825301\n", "739164825301"), ("1234", "1234"), ("12 34\r\nsecond line\n", "12 34") })
            {
                var source = new FilePinSource(PinFile(content));
                source.Check();
                using var read = source.Read(1000, -1);
                Assert.That(Text(read), Is.EqualTo(pin));
                unsafe
                {
                    Assert.That(new ReadOnlySpan<byte>(read.Bytes + read.Length, PinBuffer.Capacity - read.Length).ContainsAnyExcept((byte)0), Is.False,
                        "nothing after the PIN's first line stays in the buffer");
                }
            }
        }

        [Test]
        public void DisposeWipesThePin()
        {
            var source = new FilePinSource(PinFile("739164825301\n"));
            var read = source.Read(1000, -1);
            read.Dispose();
            Assert.That(read.Length, Is.Zero);
            unsafe { Assert.That(read.Bytes == null, Is.True); }
        }

        [Test]
        public void FilesOthersCanReadOrThatAreLinksAreRefused()
        {
            var open = PinFile("1234\n", UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead);
            Assert.That(Refused(() => new FilePinSource(open).Check()).Message, Does.Contain($"has mode 0640").And.Contain($"chmod 600 {open}"));
            var writable = PinFile("1234\n", UnixFileMode.UserRead | UnixFileMode.OtherWrite);
            Assert.That(Refused(() => new FilePinSource(writable).Check()).Message, Does.Contain("has mode 0402"));
            string link = Path.Combine(_dir, "link");
            File.CreateSymbolicLink(link, PinFile("1234\n"));
            Assert.That(Refused(() => new FilePinSource(link).Check()).Message, Does.Contain("is not a regular file"));
            Assert.That(Assert.Throws<PinUnavailableException>(() => new FilePinSource(link).Read(1000, -1))!.ReturnValue, Is.EqualTo(CKR_DEVICE_ERROR));
            Assert.That(Refused(() => new FilePinSource(Path.Combine(_dir, "absent")).Check()).Message, Does.Contain("No such file or directory"));
            Assert.That(Refused(() => new FilePinSource(_dir).Check()).Message, Does.Contain("is not a regular file"));
            // A file that turned readable by others after start-up is refused when read, too.
            var later = PinFile("1234\n");
            File.SetUnixFileMode(later, UnixFileMode.UserRead | UnixFileMode.OtherRead);
            var e = Assert.Throws<PinUnavailableException>(() => new FilePinSource(later).Read(1000, -1))!;
            Assert.That(e.ReturnValue, Is.EqualTo(CKR_DEVICE_ERROR));
            Assert.That(e.Message, Does.Contain("has mode 0404").And.Not.Contain("1234"));
        }

        [Test]
        public void EmptyOrOverlongFilesGiveNoPin()
        {
            Assert.That(Assert.Throws<PinUnavailableException>(() => new FilePinSource(PinFile("\nsecond\n")).Read(1000, -1))!.Message, Does.Contain("is empty"));
            var longLine = new string('7', PinBuffer.Capacity + 10);
            var e = Assert.Throws<PinUnavailableException>(() => new FilePinSource(PinFile(longLine)).Read(1000, -1))!;
            Assert.That(e.Message, Does.Contain("longer than").And.Not.Contain("7777"));
        }

        [Test]
        public void CredentialNeedsTheDirectoryAndTheFile()
        {
            string? saved = Environment.GetEnvironmentVariable("CREDENTIALS_DIRECTORY");
            try
            {
                Environment.SetEnvironmentVariable("CREDENTIALS_DIRECTORY", null);
                Assert.That(Refused(() => new CredentialPinSource("web-pin").Check()).Message,
                    Does.Contain("$CREDENTIALS_DIRECTORY is not set").And.Contain("LoadCredentialEncrypted=web-pin:"));
                Environment.SetEnvironmentVariable("CREDENTIALS_DIRECTORY", _dir);
                Assert.That(Refused(() => new CredentialPinSource("web-pin").Check()).Message, Does.Contain("no credential named 'web-pin'"));
                File.WriteAllText(Path.Combine(_dir, "web-pin"), "4321\n");
                File.SetUnixFileMode(Path.Combine(_dir, "web-pin"), UnixFileMode.UserRead);
                var source = new CredentialPinSource("web-pin");
                source.Check();
                using var pin = source.Read(1000, -1);
                Assert.That(Text(pin), Is.EqualTo("4321"));
            }
            finally
            {
                Environment.SetEnvironmentVariable("CREDENTIALS_DIRECTORY", saved);
            }
        }

        private ProgramPinSource Program(string script)
        {
            string path = Path.Combine(_dir, $"ask{Guid.NewGuid():N}");
            File.WriteAllText(path, "#!/bin/sh\n" + script + "\n");
            File.SetUnixFileMode(path, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
            var source = (ProgramPinSource)PinSource.Parse($"|{path}%20first%20'second%20arg'", "--pin");
            source.Check();
            return source;
        }

        [Test]
        public void AskPassProgramGivesTheFirstLineOfItsOutput()
        {
            using var pin = Program("[ \"$1 $2\" = 'first second arg' ] || exit 3\nprintf '5678\\nmore\\n'").Read(5000, -1);
            Assert.That(Text(pin), Is.EqualTo("5678"));
        }

        [Test]
        public void AskPassFailureEmptinessAndAbsenceAreReported()
        {
            var cancelled = Assert.Throws<PinUnavailableException>(() => Program("echo 5678; exit 1").Read(5000, -1))!;
            Assert.That(cancelled.ReturnValue, Is.EqualTo(CKR_FUNCTION_CANCELED));
            Assert.That(cancelled.Message, Does.Contain("exited with status 1").And.Not.Contain("5678"));
            Assert.That(Assert.Throws<PinUnavailableException>(() => Program("echo").Read(5000, -1))!.ReturnValue, Is.EqualTo(CKR_FUNCTION_CANCELED));
            Assert.That(Refused(() => PinSource.Parse("|/nonexistent/ask", "--pin").Check()).Message, Does.Contain("not found"));
            Assert.That(Refused(() => PinSource.Parse("|no-such-askpass-p11proxy", "--pin").Check()).Message, Does.Contain("not found in $PATH"));
            string notExecutable = PinFile("#!/bin/sh\necho 1\n");
            Assert.That(Refused(() => PinSource.Parse($"|{notExecutable}", "--pin").Check()).Message, Does.Contain("is not executable"));
        }

        [Test]
        public void AskPassTimeoutKillsTheProgramAndWhatItStarted()
        {
            string childFile = Path.Combine(_dir, "child");
            var source = Program($"sleep 60 & echo $! > {childFile}; wait");
            var watch = Stopwatch.StartNew();
            var e = Assert.Throws<PinUnavailableException>(() => source.Read(500, -1))!;
            Assert.That(e.ReturnValue, Is.EqualTo(CKR_FUNCTION_CANCELED));
            Assert.That(e.Message, Does.Contain("gave no PIN within 500 ms"));
            Assert.That(watch.ElapsedMilliseconds, Is.InRange(450, 5000));
            int child = int.Parse(File.ReadAllText(childFile).Trim());
            Assert.That(SpinWait.SpinUntil(() => !Directory.Exists($"/proc/{child}") || File.ReadAllText($"/proc/{child}/stat").Split(' ')[2] == "Z", 3000), Is.True,
                "the program's child was killed with its group");
        }

        [Test]
        public void CancellationStopsTheAsk()
        {
            var source = Program("sleep 60");
            int cancel = Posix.WakeFd();
            try
            {
                var watch = Stopwatch.StartNew();
                var timer = new Timer(_ => Posix.Wake(cancel), null, 200, Timeout.Infinite);
                var e = Assert.Throws<PinUnavailableException>(() => source.Read(30_000, cancel))!;
                timer.Dispose();
                Assert.That(e.ReturnValue, Is.EqualTo(CKR_FUNCTION_CANCELED));
                Assert.That(e.Message, Does.Contain("its client finalised or left"));
                Assert.That(watch.ElapsedMilliseconds, Is.LessThan(5000));
            }
            finally
            {
                Posix.close(cancel);
            }
        }
    }
}
