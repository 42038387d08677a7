package piw;

import software.amazon.awssdk.auth.credentials.AwsCredentials;
import software.amazon.awssdk.auth.credentials.DefaultCredentialsProvider;
import software.amazon.awssdk.core.util.VersionInfo;

/**
 * The default chain alone, without any STS class: how an application that uses some other
 * service (S3, DynamoDB, ...) resolves credentials. Run with the `sts` jar left off the class
 * path, it shows the classic IRSA failure: the web-identity provider needs that module.
 * Prints the access key ID's prefix (never the key) or the error.
 */
public final class Resolve {
    private Resolve() {}

    public static void main(String[] args) {
        String resolved = null;
        String error = null;
        try (DefaultCredentialsProvider chain = DefaultCredentialsProvider.builder().build()) {
            AwsCredentials creds = chain.resolveCredentials();
            resolved = "resolved " + creds.accessKeyId().substring(0, 4) + "...";
        } catch (RuntimeException e) {
            error = e.getClass().getSimpleName() + ": " + e.getMessage();
        }
        System.out.println(Json.result(VersionInfo.SDK_VERSION, resolved, error));
    }
}
