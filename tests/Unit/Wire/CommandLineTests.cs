using P11Proxy.Wire.Transport;

namespace P11Proxy.UnitTests.Wire;

/// <summary>"|command args" addresses: split as p11-kit splits them, started without a shell.</summary>
[TestFixture]
public class CommandLineTests
{
    private static string[] Split(string line)
    {
        Assert.That(CommandLine.TrySplit(line, out var arguments, out string error), Is.True, error);
        return arguments;
    }

    [Test]
    public void WhitespaceSeparatesAndRunsOfItGiveNoEmptyArguments()
    {
        Assert.That(Split("p11-kit remote /usr/lib/softhsm/libsofthsm2.so"),
            Is.EqualTo(new[] { "p11-kit", "remote", "/usr/lib/softhsm/libsofthsm2.so" }));
        Assert.That(Split("  ssh\thost   p11proxy-broker stdio \n"), Is.EqualTo(new[] { "ssh", "host", "p11proxy-broker", "stdio" }));
    }

    [Test]
    public void QuotesGroupAndMayBeEmpty()
    {
        Assert.That(Split("broker --token 'pkcs11:token=My Token' \"two words\"x ''"),
            Is.EqualTo(new[] { "broker", "--token", "pkcs11:token=My Token", "two wordsx", "" }));
        Assert.That(Split("a\"'\"b '\"'"), Is.EqualTo(new[] { "a'b", "\"" }));
    }

    [Test]
    public void BackslashesFollowP11KitsRules()
    {
        // Inside quotes a backslash escapes the quote character and stays before anything else.
        Assert.That(Split(@"'it\'s' ""a\""b"" 'c\d'"), Is.EqualTo(new[] { "it's", "a\"b", @"c\d" }));
        // Outside quotes it stays and glues the next character (even a space) to the argument.
        Assert.That(Split(@"a\ b c\'d"), Is.EqualTo(new[] { @"a\ b", @"c\'d" }));
    }

    [TestCase("", "names no program")]
    [TestCase("   ", "names no program")]
    [TestCase("broker 'unclosed", "' quote is not closed")]
    [TestCase("broker \"unclosed", "\" quote is not closed")]
    [TestCase(@"broker trailing\", "ends with a backslash")]
    [TestCase(@"broker 'trailing\", "ends with a backslash")]
    public void MalformedLinesSayWhatIsWrong(string line, string expected)
    {
        Assert.That(CommandLine.TrySplit(line, out _, out string error), Is.False);
        Assert.That(error, Does.Contain(expected));
    }

    [Test]
    public void AddressCarriesTheSplitArguments()
    {
        Assert.That(ServerAddress.TryParse("|p11proxy-broker stdio --module '/opt/my hsm/lib.so'", out var address, out string error), Is.True, error);
        Assert.That(address.Kind, Is.EqualTo(AddressKind.Command));
        Assert.That(address.Arguments, Is.EqualTo(new[] { "p11proxy-broker", "stdio", "--module", "/opt/my hsm/lib.so" }));

        Assert.That(ServerAddress.TryParse("|broker 'oops", out _, out error), Is.False);
        Assert.That(error, Does.Contain("quote is not closed"));
    }

    [Test]
    public void SpawnedProgramGetsExactlyTheArgumentsWithNoShellExpansion()
    {
        string output = Path.Combine(Path.GetTempPath(), $"p11proxy-argv-{Environment.ProcessId}-{Guid.NewGuid():N}");
        try
        {
            // sh is only the program under test here: it prints each argument it was given.
            Assert.That(ServerAddress.TryParse(
                $"|sh -c 'printf \"[%s]\" \"$@\" > {output}' zero 'a b' $HOME '*' \"\"", out var address, out string error), Is.True, error);
            using (var child = SpawnedProcess.Start(address.Arguments))
            {
            }
            Assert.That(File.ReadAllText(output), Is.EqualTo("[a b][$HOME][*][]"));
        }
        finally
        {
            File.Delete(output);
        }
    }

    [Test]
    public void MissingProgramIsReportedWithTheReason()
    {
        var e = Assert.Throws<TransportException>(() => SpawnedProcess.Start(["p11proxy-no-such-program-here", "stdio"]));
        Assert.That(e!.Message, Does.Contain("p11proxy-no-such-program-here").And.Contain("No such file or directory"));
    }
}
