using System.ComponentModel;
using System.Diagnostics;
using System.Globalization;
using System.Reflection;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text;
using P11Proxy.Pkcs11;

namespace P11Proxy.UnitTests.Pkcs11;

/// <summary>
/// Compares the C# ABI structs with what the C compiler makes of the real headers, so a wrong
/// field type or order shows up here rather than as memory corruption inside a host process.
/// </summary>
[TestFixture]
public unsafe class AbiLayoutTests
{
    // Structs compared against NSS's headers (the OASIS 3.0 definitions Debian ships).
    private static readonly Type[] NssChecked =
    [
        typeof(CK_VERSION), typeof(CK_INFO), typeof(CK_SLOT_INFO), typeof(CK_TOKEN_INFO), typeof(CK_SESSION_INFO),
        typeof(CK_MECHANISM_INFO), typeof(CK_ATTRIBUTE), typeof(CK_DATE), typeof(CK_MECHANISM), typeof(CK_INTERFACE),
        typeof(CK_RSA_PKCS_PSS_PARAMS), typeof(CK_RSA_PKCS_OAEP_PARAMS), typeof(CK_ECDH1_DERIVE_PARAMS),
        typeof(CK_GCM_PARAMS), typeof(CK_AES_CTR_PARAMS),
        typeof(CK_GCM_MESSAGE_PARAMS), typeof(CK_CCM_MESSAGE_PARAMS), typeof(CK_SALSA20_CHACHA20_POLY1305_MSG_PARAMS),
        typeof(CK_IBM_ECDSA_OTHER_PARAMS), typeof(CK_IBM_BTC_DERIVE_PARAMS), typeof(CK_IBM_KYBER_PARAMS),
        typeof(CK_IBM_ATTRIBUTEBOUND_WRAP_PARAMS),
        typeof(CK_FUNCTION_LIST), typeof(CK_FUNCTION_LIST_3_0),
    ];

    // NSS's CK_C_INITIALIZE_ARGS adds a non-standard LibraryParameters field before pReserved, so
    // this one is compared with p11-kit's header, which follows the standard (and is our peer).
    private static readonly Type[] P11KitChecked = [typeof(CK_C_INITIALIZE_ARGS)];

    // No Debian header has the IBM parameter structs; these are p11-kit's common/pkcs11x.h.
    private const string IbmStructs = """
        typedef struct { CK_ULONG submechanism; } CK_IBM_ECDSA_OTHER_PARAMS;
        typedef struct {
            CK_ULONG type; CK_ULONG childKeyIndex; CK_BYTE_PTR pChainCode; CK_ULONG ulChainCodeLen; CK_ULONG version;
        } CK_IBM_BTC_DERIVE_PARAMS;
        typedef struct {
            CK_ULONG ulVersion; CK_ULONG mode; CK_ULONG kdf; CK_BBOOL bPrepend; CK_BYTE *pCipher; CK_ULONG ulCipherLen;
            CK_BYTE *pSharedData; CK_ULONG ulSharedDataLen; CK_OBJECT_HANDLE hSecret;
        } CK_IBM_KYBER_PARAMS;
        typedef struct { CK_OBJECT_HANDLE hSignVerifyKey; } CK_IBM_ATTRIBUTEBOUND_WRAP_PARAMS;

        """;

    [Test]
    public void Structs_match_NSS_pkcs11_headers() =>
        AssertLayouts(NssChecked, CProbe.NssPrelude + IbmStructs, CProbe.NssIncludes);

    [Test]
    public void CK_C_INITIALIZE_ARGS_matches_p11_kit_header() =>
        AssertLayouts(P11KitChecked, CProbe.P11KitPrelude, CProbe.P11KitIncludes);

    [Test]
    public void Function_pointer_offsets_match_C()
    {
        string[] probed =
        [
            "C_Initialize", "C_GetFunctionList", "C_OpenSession", "C_WaitForSlotEvent", "C_GetInterfaceList",
            "C_LoginUser", "C_MessageEncryptInit", "C_MessageVerifyFinal",
        ];
        var c = new StringBuilder(CProbe.NssPrelude).Append("int main(void) {\n");
        foreach (var name in probed)
            c.Append($"  printf(\"{name} %zu\\n\", offsetof(CK_FUNCTION_LIST_3_0, {name}));\n");
        c.Append("  printf(\"C_WaitForSlotEvent_240 %zu\\n\", offsetof(CK_FUNCTION_LIST, C_WaitForSlotEvent));\n");
        c.Append("  printf(\"size_240 %zu\\nsize_30 %zu\\n\", sizeof(CK_FUNCTION_LIST), sizeof(CK_FUNCTION_LIST_3_0));\n");
        c.Append("  return 0;\n}\n");
        var expected = CProbe.Run(c.ToString(), CProbe.NssIncludes);

        // Real addresses in a real instance: independent of Marshal's idea of the layout.
        CK_FUNCTION_LIST_3_0 list;
        CK_FUNCTION_LIST list240;
        var b = (byte*)&list;
        var actual = new Dictionary<string, ulong>
        {
            ["C_Initialize"] = (ulong)((byte*)&list.C_Initialize - b),
            ["C_GetFunctionList"] = (ulong)((byte*)&list.C_GetFunctionList - b),
            ["C_OpenSession"] = (ulong)((byte*)&list.C_OpenSession - b),
            ["C_WaitForSlotEvent"] = (ulong)((byte*)&list.C_WaitForSlotEvent - b),
            ["C_GetInterfaceList"] = (ulong)((byte*)&list.C_GetInterfaceList - b),
            ["C_LoginUser"] = (ulong)((byte*)&list.C_LoginUser - b),
            ["C_MessageEncryptInit"] = (ulong)((byte*)&list.C_MessageEncryptInit - b),
            ["C_MessageVerifyFinal"] = (ulong)((byte*)&list.C_MessageVerifyFinal - b),
            ["C_WaitForSlotEvent_240"] = (ulong)((byte*)&list240.C_WaitForSlotEvent - (byte*)&list240),
            ["size_240"] = (ulong)sizeof(CK_FUNCTION_LIST),
            ["size_30"] = (ulong)sizeof(CK_FUNCTION_LIST_3_0),
        };
        Assert.That(actual, Is.EquivalentTo(expected));
        Assert.That(expected["size_240"], Is.EqualTo((ulong)(8 + 8 * Pkcs11Abi.FunctionCount240)));
        Assert.That(expected["size_30"], Is.EqualTo((ulong)(8 + 8 * Pkcs11Abi.FunctionCount30)));
    }

    [Test]
    public void Function_lists_have_the_standard_number_of_entries()
    {
        static int Pointers(Type t) => t.GetFields(BindingFlags.Public | BindingFlags.Instance).Count(f => f.FieldType.IsFunctionPointer || f.FieldType.IsUnmanagedFunctionPointer);
        Assert.That(Pointers(typeof(CK_FUNCTION_LIST)), Is.EqualTo(Pkcs11Abi.FunctionCount240));
        Assert.That(Pointers(typeof(CK_FUNCTION_LIST_3_0)), Is.EqualTo(Pkcs11Abi.FunctionCount30));

        // The 2.40 list must be a prefix of the 3.0 one, name for name.
        var names240 = typeof(CK_FUNCTION_LIST).GetFields().Select(f => f.Name);
        var names30 = typeof(CK_FUNCTION_LIST_3_0).GetFields().Select(f => f.Name).Take(1 + Pkcs11Abi.FunctionCount240);
        Assert.That(names30, Is.EqualTo(names240));
    }

    [Test]
    public void Padded_text_round_trips_and_never_splits_a_character()
    {
        var field = new byte[8];
        Pkcs11Abi.WritePadded(field, "abc");
        Assert.That(Encoding.ASCII.GetString(field), Is.EqualTo("abc     "));
        Assert.That(Pkcs11Abi.ReadPadded(field), Is.EqualTo("abc"));

        Pkcs11Abi.WritePadded(field, "abcdefgé"); // é is 2 bytes and would straddle the end
        Assert.That(Pkcs11Abi.ReadPadded(field), Is.EqualTo("abcdefg"));
        Assert.That(field[7], Is.EqualTo((byte)' '));
    }

    // Every public instance field's offset and size, and the struct's size: C vs C#.
    private static void AssertLayouts(Type[] types, string prelude, string[] includes)
    {
        var c = new StringBuilder(prelude).Append("int main(void) {\n");
        var actual = new Dictionary<string, ulong>();
        foreach (var type in types)
        {
            c.Append($"  printf(\"{type.Name} %zu\\n\", sizeof({type.Name}));\n");
            actual[type.Name] = (ulong)ManagedSize(type);
            Assert.That(Marshal.SizeOf(type), Is.EqualTo(ManagedSize(type)), $"{type.Name} must be blittable");
            foreach (var field in type.GetFields(BindingFlags.Public | BindingFlags.Instance))
            {
                c.Append($"  printf(\"{type.Name}.{field.Name} %zu\\n\", offsetof({type.Name}, {field.Name}));\n");
                actual[$"{type.Name}.{field.Name}"] = (ulong)Marshal.OffsetOf(type, field.Name);
                // Sizes too: a CK_BBOOL declared as nuint before a pointer would not move any offset.
                c.Append($"  printf(\"{type.Name}.{field.Name}.size %zu\\n\", sizeof((({type.Name} *)0)->{field.Name}));\n");
                actual[$"{type.Name}.{field.Name}.size"] = (ulong)FieldSize(field.FieldType);
            }
        }
        c.Append("  return 0;\n}\n");
        var expected = CProbe.Run(c.ToString(), includes);

        var mismatches = expected.Keys.Union(actual.Keys).Order(StringComparer.Ordinal)
            .Where(k => !expected.TryGetValue(k, out var e) || !actual.TryGetValue(k, out var a) || e != a)
            .Select(k => $"{k}: C {(expected.TryGetValue(k, out var e) ? e : "-")}, C# {(actual.TryGetValue(k, out var a) ? a : "-")}")
            .ToList();
        Assert.That(mismatches, Is.Empty);
    }

    private static int FieldSize(Type type) =>
        type.IsPointer || type.IsFunctionPointer || type.IsUnmanagedFunctionPointer ? IntPtr.Size : ManagedSize(type);

    private static int ManagedSize(Type type) =>
        (int)typeof(Unsafe).GetMethod(nameof(Unsafe.SizeOf))!.MakeGenericMethod(type).Invoke(null, null)!;
}

/// <summary>Compiles and runs a small C program that prints "name value" lines.</summary>
internal static class CProbe
{
    public const string NssPrelude = """
        #include <stddef.h>
        #include <stdio.h>
        #include <nss/pkcs11.h>

        """;

    public const string P11KitPrelude = """
        #include <stddef.h>
        #include <stdio.h>
        #include <p11-kit/pkcs11.h>

        """;

    // pkcs11t.h includes NSPR's prtypes.h by its bare name.
    public static readonly string[] NssIncludes = ["/usr/include/nspr"];
    public static readonly string[] P11KitIncludes = ["/usr/include/p11-kit-1"];

    public static Dictionary<string, ulong> Run(string source, string[] includeDirs)
    {
        RequireHeader("/usr/include/nss/pkcs11t.h", "libnss3-dev");
        RequireHeader("/usr/include/nspr/prtypes.h", "libnspr4-dev");
        RequireHeader("/usr/include/p11-kit-1/p11-kit/pkcs11.h", "libp11-kit-dev");

        var dir = Directory.CreateTempSubdirectory("p11proxy-probe-");
        try
        {
            var c = Path.Combine(dir.FullName, "probe.c");
            var exe = Path.Combine(dir.FullName, "probe");
            File.WriteAllText(c, source);
            var args = new List<string> { "-std=gnu11", "-o", exe, c };
            args.AddRange(includeDirs.Select(d => "-I" + d));
            var (ccExit, _, ccErrors) = Exec("cc", args);
            if (ccExit != 0)
                Assert.Fail($"the C probe did not compile (cc exit {ccExit}):\n{ccErrors}\n--- probe.c ---\n{source}");
            var (exit, output, errors) = Exec(exe, []);
            if (exit != 0)
                Assert.Fail($"the C probe failed (exit {exit}):\n{errors}");

            var values = new Dictionary<string, ulong>();
            foreach (var line in output.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
            {
                var parts = line.Split(' ');
                values[parts[0]] = parts[1].StartsWith("0x", StringComparison.Ordinal)
                    ? ulong.Parse(parts[1].AsSpan(2), NumberStyles.HexNumber, CultureInfo.InvariantCulture)
                    : ulong.Parse(parts[1], CultureInfo.InvariantCulture);
            }
            return values;
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    private static void RequireHeader(string path, string package)
    {
        if (!File.Exists(path))
            Assert.Fail($"{path} is missing; install Debian's {package} (the ABI and constant tests compare against it)");
    }

    // Never skips: a machine without cc must not pass these tests silently.
    private static (int Exit, string Output, string Errors) Exec(string file, IEnumerable<string> args)
    {
        var start = new ProcessStartInfo(file)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var arg in args)
            start.ArgumentList.Add(arg);
        Process process;
        try
        {
            process = Process.Start(start) ?? throw new InvalidOperationException($"cannot run '{file}'");
        }
        catch (Win32Exception e)
        {
            Assert.Fail($"cannot run '{file}' ({e.Message}); these tests need a C compiler on PATH as 'cc' (Debian: gcc)");
            throw; // not reached: Assert.Fail throws
        }
        using (process)
        {
            var stderr = process.StandardError.ReadToEndAsync();
            var stdout = process.StandardOutput.ReadToEnd();
            if (!process.WaitForExit(60_000))
            {
                process.Kill(entireProcessTree: true);
                Assert.Fail($"'{file}' did not finish within 60 s");
            }
            return (process.ExitCode, stdout, stderr.Result);
        }
    }
}
