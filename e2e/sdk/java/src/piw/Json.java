package piw;

/** The one-line JSON result every e2e SDK program prints (no JSON library on the class path). */
final class Json {
    private Json() {}

    static String result(String version, String arn, String error) {
        StringBuilder out = new StringBuilder("{\"sdk\":\"aws-sdk-java-v2\",\"version\":");
        out.append(quote(version));
        if (arn != null) {
            out.append(",\"arn\":").append(quote(arn));
        }
        if (error != null) {
            out.append(",\"error\":").append(quote(error));
        }
        return out.append('}').toString();
    }

    private static String quote(String s) {
        StringBuilder q = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            if (c == '"' || c == '\\') {
                q.append('\\').append(c);
            } else if (c < 0x20) {
                q.append(String.format("\\u%04x", (int) c));
            } else {
                q.append(c);
            }
        }
        return q.append('"').toString();
    }
}
