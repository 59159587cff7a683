using System.Diagnostics;
using System.Reflection;
using System.Runtime.CompilerServices;
using System.Text;
using P11Proxy.Pkcs11;
using static P11Proxy.Pkcs11.Pkcs11Constants;

namespace P11Proxy.UnitTests.Pkcs11;

/// <summary>The generated constants against the C preprocessor's reading of the same headers.</summary>
[TestFixture]
public class ConstantsTests
{
    [Test]
    public void Selected_values_match_the_C_compiler()
    {
        // The IBM values are typed in from p11-kit's common/pkcs11x.h rather than taken from our
        // vendor-extensions.h, so a slip in either shows up here.
        var c = new StringBuilder(CProbe.NssPrelude).Append("""
            #define CKM_IBM_KYBER (CKM_VENDOR_DEFINED + 0x10024)
            #define CKA_IBM_OPAQUE (CKA_VENDOR_DEFINED + 1)
            #define CKA_IBM_KYBER_SK (CKA_VENDOR_DEFINED + 0xd000B)
            #define CKK_IBM_PQC_DILITHIUM (CKK_VENDOR_DEFINED + 0x10023)
            #define P(name) printf("%s 0x%lx\n", #name, (unsigned long)(name))
            int main(void) {
                P(CKA_WRAP_TEMPLATE); P(CKA_ALLOWED_MECHANISMS); P(CKM_AES_GCM); P(CKR_OPERATION_CANCEL_FAILED);
                P(CK_UNAVAILABLE_INFORMATION); P(CKR_BUFFER_TOO_SMALL); P(CKF_ARRAY_ATTRIBUTE);
                P(CKM_IBM_KYBER); P(CKA_IBM_OPAQUE); P(CKA_IBM_KYBER_SK); P(CKK_IBM_PQC_DILITHIUM);
                return 0;
            }
            """);
        var fromC = CProbe.Run(c.ToString(), CProbe.NssIncludes);

        Assert.Multiple(() =>
        {
            Assert.That(CKA_WRAP_TEMPLATE, Is.EqualTo(fromC["CKA_WRAP_TEMPLATE"]));
            Assert.That(CKA_WRAP_TEMPLATE, Is.EqualTo(0x40000211UL));
            Assert.That(CKA_ALLOWED_MECHANISMS, Is.EqualTo(fromC["CKA_ALLOWED_MECHANISMS"]));
            Assert.That(CKM_AES_GCM, Is.EqualTo(fromC["CKM_AES_GCM"]));
            Assert.That(CKR_OPERATION_CANCEL_FAILED, Is.EqualTo(fromC["CKR_OPERATION_CANCEL_FAILED"]));
            Assert.That(CK_UNAVAILABLE_INFORMATION, Is.EqualTo(fromC["CK_UNAVAILABLE_INFORMATION"]));
            Assert.That(CK_UNAVAILABLE_INFORMATION, Is.EqualTo(ulong.MaxValue));
            Assert.That(CKR_BUFFER_TOO_SMALL, Is.EqualTo(fromC["CKR_BUFFER_TOO_SMALL"]));
            Assert.That(CKF_ARRAY_ATTRIBUTE, Is.EqualTo(fromC["CKF_ARRAY_ATTRIBUTE"]));
            Assert.That(CKM_IBM_KYBER, Is.EqualTo(fromC["CKM_IBM_KYBER"]));
            Assert.That(CKA_IBM_OPAQUE, Is.EqualTo(fromC["CKA_IBM_OPAQUE"]));
            Assert.That(CKA_IBM_KYBER_SK, Is.EqualTo(fromC["CKA_IBM_KYBER_SK"]));
            Assert.That(CKK_IBM_PQC_DILITHIUM, Is.EqualTo(fromC["CKK_IBM_PQC_DILITHIUM"]));
        });
    }

    [Test]
    public void Every_constant_NSS_defines_has_the_same_value()
    {
        var constants = typeof(Pkcs11Constants).GetFields(BindingFlags.Public | BindingFlags.Static)
            .Where(f => f.IsLiteral).ToDictionary(f => f.Name, f => (ulong)f.GetRawConstantValue()!);
        var c = new StringBuilder(CProbe.NssPrelude).Append("int main(void) {\n");
        foreach (var name in constants.Keys)
            c.Append($"#ifdef {name}\n  printf(\"{name} 0x%lx\\n\", (unsigned long)({name}));\n#endif\n");
        c.Append("  return 0;\n}\n");
        var fromC = CProbe.Run(c.ToString(), CProbe.NssIncludes);

        Assert.That(fromC, Has.Count.GreaterThan(800), "the probe saw too few of our names in pkcs11t.h");
        var wrong = fromC.Where(kv => constants[kv.Key] != kv.Value)
            .Select(kv => $"{kv.Key}: C 0x{kv.Value:x}, C# 0x{constants[kv.Key]:x}").ToList();
        Assert.That(wrong, Is.Empty);
    }

    [Test]
    public void Names_map_values_to_the_first_name_defined()
    {
        Assert.Multiple(() =>
        {
            Assert.That(Pkcs11Names.ReturnValue(CKR_BUFFER_TOO_SMALL), Is.EqualTo("CKR_BUFFER_TOO_SMALL"));
            Assert.That(Pkcs11Names.ReturnValue(CKR_OK), Is.EqualTo("CKR_OK"));
            Assert.That(Pkcs11Names.ReturnValue(0x7fff_0000UL), Is.Null);
            Assert.That(Pkcs11Names.Mechanism(CKM_AES_GCM), Is.EqualTo("CKM_AES_GCM"));
            Assert.That(Pkcs11Names.Mechanism(CKM_IBM_KYBER), Is.EqualTo("CKM_IBM_KYBER"));
            Assert.That(Pkcs11Names.Attribute(CKA_WRAP_TEMPLATE), Is.EqualTo("CKA_WRAP_TEMPLATE"));
            Assert.That(Pkcs11Names.Attribute(CKA_IBM_OPAQUE), Is.EqualTo("CKA_IBM_OPAQUE"));
            Assert.That(Pkcs11Names.ObjectClass(CKO_PRIVATE_KEY), Is.EqualTo("CKO_PRIVATE_KEY"));
            Assert.That(Pkcs11Names.KeyType(CKK_EC), Is.AnyOf("CKK_EC", "CKK_ECDSA")); // same value, header order decides
            Assert.That(Pkcs11Names.KeyType(CKK_AES), Is.EqualTo("CKK_AES"));
        });
    }

    [Test]
    public void Generated_file_is_what_the_generator_produces_now()
    {
        var dir = Directory.CreateTempSubdirectory("p11proxy-gen-");
        try
        {
            var fresh = Path.Combine(dir.FullName, "Pkcs11Constants.g.cs");
            var (exit, errors) = RunGenerator(new() { ["PKCS11_CONSTANTS_OUT"] = fresh });
            Assert.That(exit, Is.EqualTo(0), errors);
            Assert.That(File.ReadAllText(fresh), Is.EqualTo(File.ReadAllText(Path.Combine(Pkcs11SourceDir(), "Pkcs11Constants.g.cs"))),
                "src/Pkcs11/Pkcs11Constants.g.cs is stale: run bash src/Pkcs11/generate-constants.sh");
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    [Test]
    public void Generator_names_the_package_when_the_header_is_missing()
    {
        var dir = Directory.CreateTempSubdirectory("p11proxy-gen-");
        try
        {
            var (exit, errors) = RunGenerator(new()
            {
                ["PKCS11T_H"] = Path.Combine(dir.FullName, "no-such-pkcs11t.h"),
                ["PKCS11_CONSTANTS_OUT"] = Path.Combine(dir.FullName, "out.cs"),
            });
            Assert.That(exit, Is.Not.EqualTo(0));
            Assert.That(errors, Does.Contain("libnss3-dev"));
            Assert.That(File.Exists(Path.Combine(dir.FullName, "out.cs")), Is.False);
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    private static (int Exit, string Errors) RunGenerator(Dictionary<string, string> environment)
    {
        var start = new ProcessStartInfo("bash")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        start.ArgumentList.Add(Path.Combine(Pkcs11SourceDir(), "generate-constants.sh"));
        foreach (var (key, value) in environment)
            start.Environment[key] = value;
        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEnd();
        process.WaitForExit();
        return (process.ExitCode, stderr + stdout.Result);
    }

    // The sources, not the build output: tests may build into any --artifacts-path.
    private static string Pkcs11SourceDir([CallerFilePath] string thisFile = "")
    {
        var dir = Path.GetFullPath(Path.Combine(Path.GetDirectoryName(thisFile)!, "../../../src/Pkcs11"));
        if (!File.Exists(Path.Combine(dir, "generate-constants.sh")))
            Assert.Fail($"cannot find src/Pkcs11/generate-constants.sh at {dir}");
        return dir;
    }
}
