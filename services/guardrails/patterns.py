"""Prompt-injection pattern families, each with a weight and a human-readable reason.

Patterns run on the normalised views of a prompt (see normalize.py), so they are
written in lower case and allow optional spaces between the words of a phrase:
letters spaced out by an attacker ("i g n o r e a l l") are joined before matching
and lose their word gaps. Families marked `decisive` are precise enough that a hit
settles the verdict without the learned signal.

Languages: English, German, Spanish, French, Italian, Portuguese, Dutch, Polish,
Russian and Croatian/Serbian/Bosnian for instruction overrides (the attacks seen most
often in other languages); English and German for the other families.

Each family lists anchors: substrings at least one of which every one of its
patterns needs (checked with spaces removed, so spaced-out letters still pass).
Families without an anchor in the text are skipped, which keeps the dozens of
patterns from scanning every prompt; a unit test checks each pattern's examples.
"""

import re
from dataclasses import dataclass

# Between a verb and its object: up to four short words ("all of the previous").
_GAP = r"(?:\s*[\w'\-]+[\s,]+){0,4}?\s*"


def _phrase(text: str) -> str:
    """Regex for a phrase given with single spaces: each space becomes optional space."""
    return text.replace(" ", r"\s*")


@dataclass(frozen=True)
class Family:
    name: str
    reason: str
    weight: float
    decisive: bool
    anchors: tuple[str, ...]
    patterns: tuple[re.Pattern, ...]

    def search(self, text: str, compact: str) -> re.Match | None:
        """First match in text; `compact` is text lower-cased without whitespace."""
        if not any(anchor in compact for anchor in self.anchors):
            return None
        for pattern in self.patterns:
            match = pattern.search(text)
            if match:
                return match
        return None


def _compile(*patterns: str) -> tuple[re.Pattern, ...]:
    return tuple(re.compile(pattern, re.IGNORECASE | re.DOTALL) for pattern in patterns)


_OVERRIDE_VERBS_EN = (r"(?:ignore|ignoring|disregard|disregarding|forget|forgetting|skip|drop|abandon|override|"
                      r"bypass|neglect|discard|set\s*aside|throw\s*away|erase|delete|remove|overlook|"
                      r"pay\s*no\s*attention\s*to|unlearn)")
# What an indirect injection tells the model to ignore: the material it was given.
_MATERIAL = (r"(?:web\s*page|webpage|page|site|e-?mail|message|resume|cv|document|doc|article|text|function|code|"
             r"table|paper|review|file|pdf|post|comment|content|data|input|summary|translation|story|report|task)")
_SAY = r"(?:say|state|tell|write|print|output|respond|reply|answer|claim|declare|report|insist|return|reveal)"
_PRIOR = (r"(?:previous|previously|prior|above|preceding|earlier|former|foregoing|initial|original|old|existing|"
          r"given|provided|system|your|all|any|every|these|those)")
_OBJECTS_EN = (r"(?:instructions?|prompts?|rules|guidelines|guidance|directions|directives|commands|orders|tasks|assignments|"
               r"context|programming|information|documents|articles|training|restrictions|constraints|guardrails|"
               r"filters|polic(?:y|ies)|messages)")

INSTRUCTION_OVERRIDE = Family(
    name="instruction_override",
    reason="instruction override",
    weight=0.92,
    decisive=True,
    anchors=(
        'ignor', 'disregard', 'forget', 'skip', 'drop', 'abandon', 'overrid', 'bypass', 'neglect', 'discard',
        'setaside', 'throwaway', 'erase', 'delete', 'remove', 'despite', 'regardless', 'contrary',
        'instructions', 'changeyour', 'newrules', 'vergiss', 'vergessen', 'vergesst', 'missacht', 'übergehe',
        'verwirf', 'streiche', 'obigen', 'vorherigen', 'bisherigen', 'vorangegangenen', 'abweichend', 'olvid',
        'descarta', 'esque', 'oubli', 'dimentic', 'vergeet', 'negeer', 'zapomnij', 'zignoruj', 'забуд',
        'игнорир', 'zaboravi', 'overlook', 'paynoattention', 'unlearn', 'whatever', 'everything', 'anything',
        'cancel', 'void', 'revoked', 'outdated', 'obsolete', 'nolongervalid', 'nevermind', '忽略', '无视', '無視',
        '忘记', '忘掉', '忘れ', 'अनदेख', 'नज़रअंदाज़', 'भूल', 'تجاهل', 'انس', 'listentomy', 'obey',
    ),
    patterns=_compile(
        # English: "ignore all previous instructions", "forget about all the assignments"
        rf"\b{_OVERRIDE_VERBS_EN}\b{_GAP}{_PRIOR}\b{_GAP}{_OBJECTS_EN}\b",
        r"\b(?:ignore|disregard|forget|drop)\s*(?:about\s*)?(?:everything|anything|all)\s*(?:above|before|previous|"
        r"prior|else|that\s*came\s*before|you\s*(?:know(?!\s*about)|were\s*told|have\s*been\s*told)|(?:i|we|you)\s*(?:said|"
        r"told|discussed))",
        r"\b(?:ignore|disregard)\s*(?:the\s*)?above\b",
        # Indirect injection: "Ignore the webpage and state: ...", "ignore the resume and say ..."
        rf"\b(?:ignore|disregard|forget|overlook)\s*(?:the|this|that|my|your)\s*(?:above\s*|previous\s*|whole\s*)?"
        rf"{_MATERIAL}s?\s*(?:[,;:.\-]\s*|and\s*|then\s*)+(?:instead\s*)?(?:just\s*|simply\s*|only\s*)?{_SAY}\b",
        r"\bregardless\s*of\s*(?:any\s*|all\s*|your\s*|the\s*)*(?:previous|prior|earlier|former|original)\s*"
        r"(?:tasks|instructions|rules|prompts|directions)\b",
        r"\b(?:whatever|everything|anything)\s*you\s*(?:were|have\s*been|'ve\s*been)\s*(?:told|instructed)"
        r"(?:\s*(?:before|earlier|so\s*far))?\s*,?\s*(?:it\s*)?(?:no\s*longer|doesn'?t|does\s*not)\s*(?:applies|apply|matter)",
        r"\b(?:your|the)\s*(?:previous|prior|earlier|old|original)\s*(?:orders|instructions|rules)\s*(?:are|were)\s*"
        r"(?:cancell?ed|void|revoked|outdated|obsolete|no\s*longer\s*valid)",
        r"\bnever\s*mind\s*(?:what|everything)\s*(?:you\s*(?:were|have\s*been)\s*told|i\s*said)\s*(?:before|earlier)",
        r"\b(?:ignore|forget|disregard)\s*(?:about\s*)?everything\s*(?:and|,|-)\s*(?:just\s*|then\s*)?(?:write|"
        r"say|tell|print|output|jsut|answer|respond|reply|repeat)\b",
        rf"\b(?:despite|regardless\s*of|contrary\s*to)\s*(?:what|anything|everything)\s*"
        rf"(?:you(?:'ve|\s*have)?\s*(?:been|"
        rf"were)\s*told|(?:your|the)\s*{_OBJECTS_EN})",
        r"\b(?:your|the)\s*(?:new\s*)?instructions\s*(?:are|is)\s*now\b",
        r"\bchange\s*your\s*(?:instructions|rules|programming)\b",
        r"\bnew\s*(?:instructions|rules)\s*:",
        # German
        r"\b(?:ignorier(?:e|en|t)?|vergiss|vergessen\s*sie|vergesst|missachte(?:n)?|übergehe|verwirf|streiche)\b"
        r"(?:\s*[\w'\-]+[\s,]+){0,5}?\s*(?:anweisungen|instruktionen|befehle|aufgaben|aufträge|informationen|"
        r"regeln|vorgaben|angaben|ausführungen|alles)\b",
        r"\b(?:obigen|vorherigen|bisherigen)\s*(?:ausführungen|anweisungen|instruktionen)\s*(?:ignorieren|vergessen|"
        r"missachten)",
        r"\babweichend\s*(?:zu|von)\s*(?:den\s*)?(?:vorherigen|bisherigen|obigen)\s*(?:instruktionen|anweisungen)",
        r"\b(?:vorangegangenen|vorherigen|bisherigen)\s*aufgaben\s*aus\s*dem\s*kopf",
        r"\balle\s*(?:vorherigen|bisherigen)\s*informationen,?\s*die\s*(?:sie|du)\s*erhalten\s*(?:haben|hast),?\s*sind\b",
        # Spanish, Portuguese
        r"\b(?:olvida|olvide|olvidad|olvidar|ignora|ignore|ignorad|descarta|esqueça|esqueca|esquece)\b"
        r"(?:\s*[\w'\-]+[\s,]+){0,4}?\s*(?:instrucciones|"
        r"instruções|instrucoes|órdenes|reglas|regras|todo|tudo)\b",
        # French
        r"\b(?:oublie|oubliez|ignore|ignorez)\b(?:\s*[\w'\-]+[\s,]+){0,4}?\s*(?:instructions|consignes|règles|tout)\b",
        # Italian
        r"\b(?:dimentica|dimenticate|ignora|ignorate)\b(?:\s*[\w'\-]+[\s,]+){0,4}?\s*(?:istruzioni|regole|tutto)\b",
        # Dutch, Polish
        r"\b(?:vergeet|negeer)\b(?:\s*[\w'\-]+[\s,]+){0,4}?\s*(?:instructies|regels|alles)\b",
        r"\b(?:zapomnij|zignoruj)\b(?:\s*[\w'\-]+[\s,]+){0,4}?\s*(?:instrukcje|polecenia|wszystko)\b",
        # Russian, Croatian/Serbian/Bosnian
        r"(?:забудь|забудьте|игнорируй|игнорируйте)"
        r"(?:\s*[\w'\-]+[\s,]+){0,4}?\s*(?:инструкции|правила|указания|"
        r"всё|все)",
        r"\b(?:zaboravi|zaboravite|ignoriraj|ignoriši)\b(?:\s*[\w'\-]+[\s,]+){0,4}?\s*(?:instrukcije|upute|"
        r"uputstva|pravila|sve)\b",
        # "Ignorez la fonction et indiquez ...", "ignora el texto y di ...", "ignoriere den Text und sag ..."
        r"\b(?:ignorez|ignore|ignora|ignorad|ignoriere|ignorieren\s*sie)\s*(?:la|le|les|el|los|las|il|lo|die|den|das|"
        r"dem)\s*[\w-]+\s*(?:et|y|e|und)\s*(?:indiquez|dites|écrivez|affirmez|di|dí|diga|escribe|indica|afirma|"
        r"scrivi|dì|sag|sagen\s*sie|schreib|schreibe|gib)\b",
        r"無視して.{0,40}?(?:述べて|言って|書いて|答えて|伝えて)",
        r"\byou\s*(?:must|have\s*to|will)\s*(?:now\s*)?(?:listen\s*to\s*my\s*(?:instructions|commands|orders)|"
        r"obey\s*(?:me|my)\b)",
        # Chinese, Japanese, Hindi, Arabic
        r"(?:忽略|无视|無視|忘记|忘掉)(?:掉)?(?:之前|以前|先前|上面|上述|以上|所有|全部|你的)?.{0,6}?(?:指令|指示|说明|規則|规则|命令)",
        r"(?:以前|前|上記|これまで)の.{0,6}?(?:指示|命令|指令|ルール)を(?:無視|忘れ)",
        r"निर्देशों\s*(?:की\s*अनदेखी|को\s*अनदेखा|को\s*नज़रअंदाज़|को\s*भूल)",
        r"(?:تجاهل|انس)\s*(?:جميع\s*|كل\s*)?(?:التعليمات|الأوامر|التوجيهات)",
    ),
)

TASK_HIJACK = Family(
    name="task_hijack",
    reason="task hijack (new task replaces the current one)",
    weight=0.7,
    decisive=False,
    anchors=(
        'focus', 'concentrate', 'follow', 'newtask', 'thatis', 'stop', 'attention', 'instead', 'rather',
        'donot', 'just', 'only', 'repeatafter', 'folgen', 'konzentriere', 'neuenaufgabe', 'achtung',
        'schreibenur',
    ),
    patterns=_compile(
        _phrase(r"\b(?:now|next) (?:focus|concentrate) on (?:your|the|a) new task"),
        _phrase(
            r"\b(?:now )?(?:new|further|more|additional) (?:tasks|instructions) (?:follow|are following|are followed)"
        ),
        _phrase(r"\bstart (?:over|from the front|again) with a new task"),
        _phrase(r"\bthat is (?:enough|done)\s*[.!]\s*now\b"),
        r"\b(?:stop|attention)\s*[-:,!]+\s*(?:stop\s*[-:,!]+\s*)?(?:write|say|print|ignore|i\s*urgently)",
        r"\b(?:instead|rather)\s*(?:just\s*)?(?:say|print|output|write|respond\s*with|reply\s*with)\b",
        _phrase(r"\bdo not (?:answer|respond to) (?:this|the) question (?:but|and)"),
        _phrase(r"\b(?:just|only) (?:say|output|print|write|respond with|reply with|answer with)\b"),
        _phrase(r"\brepeat after me\b"),
        # German
        _phrase(r"\b(?:nun|jetzt) folgen (?:neue|weitere) (?:anweisungen|aufgaben)"),
        _phrase(r"\bkonzentriere dich (?:jetzt|nun) auf (?:deine|die) neue aufgabe"),
        _phrase(r"\bwir (?:starten|beginnen) (?:von neu |von vorne )?mit einer neuen aufgabe"),
        r"\b(?:achtung|stopp?)\s*[-:,!]+\s*(?:stopp?\s*[-:,!]+\s*)?(?:schreib|sag|ignorier|ich\s*benötige)",
        _phrase(r"\bschreibe nur\b"),
    ),
)

ROLE_PLAY = Family(
    name="role_play",
    reason="role-play jailbreak",
    weight=0.55,
    decisive=False,
    anchors=(
        'pretend', 'imagine', 'youare', "you're", 'fromnowon', 'actas', 'behaveas', 'respondas', 'stayin',
        'remainin', 'absorbed', 'stelldirvor', 'dubist', 'siesind', 'bistdu', 'tuso', 'fungieren',
        'deinerrolle', 'queeres', 'quetues',
    ),
    patterns=_compile(
        _phrase(r"\b(?:pretend|imagine) (?:that )?(?:you are|you're|to be|you can|you were)\b"),
        _phrase(r"\b(?:you are|you're) (?:now|no longer|from now on)\b"),
        _phrase(r"\bfrom now on,? you (?:are|will|must|shall)\b"),
        _phrase(r"\b(?:ok(?:ay)?[.,!]? )?now you are\b"),
        _phrase(r"\bi want you to act as\b"),
        _phrase(
            r"\b(?:act|behave|respond) as (?:if you were |though you were )?(?:an? |the )?(?:evil|unfiltered|uncensored|"
            r"unrestricted|python interpreter|linux terminal|jailbroken)"
        ),
        _phrase(r"\b(?:stay|remain|always stay) in (?:character|(?:your|their) roles?)\b"),
        _phrase(r"\byou are (?:role-?playing|playing the role) as\b"),
        _phrase(r"\bcompletely absorbed in your role\b"),
        # German
        _phrase(r"\bstell dir vor,? (?:du bist|dass du)\b"),
        _phrase(r"\b(?:du bist|sie sind) (?:jetzt|nun|ab sofort)\b"),
        _phrase(r"\b(?:nun|jetzt) bist du\b"),
        _phrase(r"\btu so,? als\b"),
        _phrase(r"\bich möchte,? dass sie als .{0,40}? fungieren"),
        _phrase(r"\bgehst vollkommen in deiner rolle auf\b"),
        # Spanish, French
        _phrase(r"\b(?:imagina|finge) que eres\b"),
        _phrase(r"\b(?:imagine|fais semblant) que tu es\b"),
    ),
)

JAILBREAK = Family(
    name="jailbreak",
    reason="known jailbreak persona or mode",
    weight=0.92,
    decisive=True,
    anchors=(
        'mode', 'doanythingnow', 'jailbr', 'without', 'freeof', 'nolongerbound', 'programmingguidelines',
        'immoral', 'amoral', 'unfiltered', 'uncensored', 'override', 'access',
    ),
    patterns=_compile(
        r"\b(?:dan|stan|dude|aim)\s*mode\b",
        _phrase(r"\bdo anything now\b"),
        # "on" only as a switch ("developer mode on."), not "developer mode on an Android phone".
        _phrase(r"\b(?:developer|god|jailbreak|unrestricted|unfiltered|evil) mode "
                r"(?:enabled|activated|on(?=\s*(?:[.,:;!]|$)))"),
        # "enable developer mode on my phone" is a device setting, not a persona.
        _phrase(r"\benable (?:developer|god|jailbreak|dan) mode\b(?! (?:on|in|for|to)\b)"),
        # Jailbreaking a phone or console is ordinary; a jailbroken model or persona is not.
        _phrase(r"\b(?:you are|you're|act as|as an?) (?:now )?jailbr(?:eak|oken)\b"),
        _phrase(r"\bjailbr(?:eak|oken) (?:mode|version|persona|ai|assistant|chatbot|model|gpt)\b"),
        _phrase(
            r"\b(?:without|free of|no longer bound by) (?:any )?(?:ethical |moral )?(?:restrictions|limitations|"
            r"filters|guidelines|censorship|rules|programming guidelines)\b"
            # "without restrictions on budget": a limit on something else.
            r"(?! (?:on|of|for|to|in|at)\b)"
        ),
        _phrase(r"\bno programming guidelines\b"),
        # Fake mode switches and overrides in tags: "<SYSTEM MODE>", "[ADMIN OVERRIDE]", "DEVELOPER ... OVERRIDE:"
        r"[<\[]\s*(?:system|god|admin|administrator|developer|debug|root|maintenance|sudo|jailbreak|dan)\s*"
        r"(?:mode|override|access(?:\s*granted)?)\b[^<>\[\]]{0,20}[>\]]",
        r"\b(?:system|developer|admin|administrator|root)\s*(?:training\s*data\s*)?override\s*:",
        _phrase(r"\b(?:completely|totally) (?:immoral|amoral|unfiltered|uncensored)\b"),
    ),
)

PROMPT_EXTRACTION = Family(
    name="prompt_extraction",
    reason="system-prompt extraction",
    weight=0.88,
    decisive=True,
    anchors=(
        'prompt', 'instructions', 'systemmessage', 'initialmessage', 'configuration', 'guidelines', 'rules',
        'written', 'repeat', 'beforethetext', 'secret', 'password', 'apikey', 'passphrase', 'accesscode',
        'anweisungen', 'oben', 'amanfang',
    ),
    patterns=_compile(
        r"\b(?:show|reveal|print|display|repeat|output|tell|give|list|write\s*out|leak|dump|spell\s*out|share|"
        r"disclose|what\s*(?:is|are|was|were))\b"
        r"\s*(?:me\s*|us\s*)?(?:all\s*|exactly\s*)?(?:of\s*)?(?:your|the)\s*(?:full\s*|entire\s*|complete\s*|"
        r"exact\s*|initial\s*|original\s*|hidden\s*|secret\s*|system\s*|previous\s*|first\s*)*"
        r"(?:prompt|prompts|prompt\s*texts?|instructions|system\s*message|initial\s*message|system\s*prompt|"
        r"configuration|guidelines|rules)\b"
        # "what are the rules around quoting": rules of something else.
        r"(?!\s*(?:of|for|to|in|on|about|around|regarding|concerning|governing|when|with|behind|under)\b)",
        _phrase(
            r"\bwhat (?:was|is) written (?:at the beginning of|above|before|in) (?:this|the|your) (?:prompt|conversation|"
            r"text)"
        ),
        _phrase(r"\bwhat is written above\b"),
        _phrase(r"\brepeat (?:the|all|everything)? ?(?:text|words|lines|everything) (?:above|before)"),
        _phrase(r"\b(?:copy|contents?) of the (?:full |whole )?prompt"),
        _phrase(r"\b(?:sentences?|words|text|lines) before the text\b"),
        _phrase(
            r"\b(?:what|tell me|reveal|give me|share) (?:is )?(?:your|the) (?:secret|password|secret key|api key|"
            r"passphrase|access code)\b(?! (?:of|for|to|in|on)\b)"
        ),
        # German
        r"\b(?:zeige?|gib|nenne|verrate|wiederhole)\b(?:\s*[\w'\-]+[\s,]+){0,4}?\s*(?:prompt|prompt-?texte?|"
        r"systemprompt|anweisungen)\b",
        _phrase(r"\bvorzeigen sämtlicher prompt"),
        _phrase(r"\bwas (?:steht|stand|wurde) (?:oben|am anfang)"),
    ),
)

CHAT_DELIMITERS = Family(
    name="chat_delimiters",
    reason="chat-template delimiters or a fake system turn",
    weight=0.9,
    decisive=True,
    anchors=(
        '<|', '[inst]', '[/inst]', '<<sys>>', '<</sys>>', '<sys', '</sys', '<instruction', '</instruction',
        '##', 'system:', 'assistant:', 'human:', 'user:', 'instruction:', 'instructions:', 'systemprompt:',
    ),
    patterns=_compile(
        r"<\|\s*(?:im_start|im_end|system|user|assistant|endoftext|eot_id|start_header_id|end_header_id|begin_of_text)\s*\|>",
        r"\[/?inst\]",
        r"<</?sys>>",
        r"</?\s*(?:system|sys|instructions?|system_prompt)\s*>",
        r"#{2,}\s*(?:system|instruction|instructions|new\s*instructions|override)\b",
        r"(?:^|\n)\s*(?:system|assistant)\s*:\s*\S",
        r"\bhuman\s*:.{0,400}?\bassistant\s*:",
        r"(?:^|\s)(?:human|user)\s*:\s*(?:human|user)\s*:",
        r"(?:^|\n|\\n)\s*(?:new\s*|additional\s*)?(?:instruction|instructions|system\s*prompt)\s*:\s*\S",
    ),
)

AUTHORITY = Family(
    name="authority_claim",
    reason="authority claim",
    weight=0.65,
    decisive=False,
    anchors=(
        'iam', 'thisis', 'mode', 'access', 'override', 'privileges', 'authorized', 'approved', 'sanctioned',
        'clearance', 'rights', 'icommandyou', 'ichbin', "i'm", 'asyour',
    ),
    patterns=_compile(
        _phrase(
            r"\bi am (?:your|the|an?) (?:developer|creator|admin|administrator|owner|operator|programmer|maker|"
            r"system administrator)\b"
        ),
        _phrase(
            r"\bthis is (?:an? |the )?(?:admin|administrator|system|developer|security|root|openai|anthropic) (?:override|"
            r"message|command|instruction|update|notice)\b"
        ),
        _phrase(
            r"\b(?:admin|administrator|developer|sudo|root|debug|maintenance|god) (?:mode|access|override|privileges)\b"
        ),
        _phrase(
            r"\b(?:authorized|approved|sanctioned) by (?:openai|anthropic|the (?:developers?|administrators?|system|"
            r"admins?))\b"
        ),
        _phrase(r"\bi (?:have|hold) (?:admin|root|full|developer) (?:access|privileges|clearance|rights)\b"),
        _phrase(r"\bi command you\b"),
        _phrase(r"\b(?:i am|i'm) god\b"),
        _phrase(r"\bas your (?:creator|developer|programmer|maker|owner|administrator)\b"),
        _phrase(r"\bich bin (?:dein|der|ihr) (?:entwickler|administrator|admin|erschaffer)\b"),
    ),
)

CONTEXT_IGNORE = Family(
    name="context_ignore",
    reason="asks to ignore the provided documents",
    weight=0.6,
    decisive=False,
    anchors=(
        'ownknowledge', 'donot', 'disregardingthe', 'provided', 'informationintheprompt',
    ),
    patterns=_compile(
        _phrase(
            r"\b(?:answer|respond) (?:by|from|with) your own knowledge and not (?:by|from) the (?:articles|documents|"
            r"context)"
        ),
        _phrase(r"\bdo not (?:look|search) (?:in|at) the (?:documents|articles|context)"),
        _phrase(r"\bdisregarding the (?:articles|documents|context)"),
        _phrase(r"\bnot according to the provided (?:documents|articles|context)"),
        _phrase(r"\buse also information in the prompt\b"),
    ),
)

ESCAPE_PADDING = Family(
    name="escape_padding",
    reason="escaped line breaks used as padding",
    weight=0.6,
    decisive=False,
    anchors=(
        r"\n",
    ),
    patterns=_compile(r"(?:\\\s*n\s*){4,}"),
)

ENCODING_EVASION = Family(
    name="encoding_evasion",
    reason="asks to decode and follow a hidden payload",
    weight=0.6,
    decisive=False,
    anchors=(
        'base64', 'hex', 'rot13', 'rot-13', 'binary', 'morse',
    ),
    patterns=_compile(
        _phrase(
            r"\b(?:decode|decipher|translate|convert) (?:this|the following|it)? ?(?:from )?(?:base64|base 64|hex|"
            r"hexadecimal|rot13|rot-13|binary|morse)\b.{0,60}?\b(?:follow|execute|do|obey|run|perform)\b"
        ),
        _phrase(r"\b(?:respond|answer|reply|write) (?:only )?in (?:base64|hex|rot13|binary)\b"),
    ),
)


_SECRET = (r"(?:secret\s*)?(?:password|passphrase|passcode|pass\s*word|secret\s*key|secret\s*code|secret\s*word|"
           r"access\s*code|api\s*key|pin\s*code|secret)")
# After the secret: what makes it someone's own topic ("the password for my router",
# "the password policy"), not the one the model holds.
_NOT_THEIRS = (r"(?!\s*(?:of|for(?!\s*(?:this|our)\s*(?:mode|system|upgrade|session|account|server)\b)|to|in|on|at|from|manager|managers|policy|policies|reset|strength|field|hash|hashes|"
               r"requirements|rules|generator|recovery|protected|protection|santa|garden|game|book|film|movie|novel|"
               r"series|society|agent|life|ingredient|sauce|recipe)\b)")
_REVEAL = (r"(?:confirm|share|reveal|disclose|divulge|leak|tell|give|provide|spell|print|output|display|show|repeat|"
           r"remind\s*me|say|send|hint|encode|translate|write\s*(?:out|down)?|what\s*(?:is|was|'s)|what're|"
           r"whats)")
# Asking for data held in the model's context (no "write": "write a function that
# validates the user's email address" is code).
_ASK = (r"(?:what\s*(?:is|are|was|were|'s)|which|where|tell|give|share|reveal|disclose|divulge|leak|provide|confirm|"
        r"list|repeat|print|spell|send|translate|output|display|show)")
# Whose data a prompt asks for: a user or customer the model knows from its context.
_PERSON_DATA = (r"(?:e-?mail(?:\s*address)?|(?:home\s*)?address|phone(?:\s*number)?|birth\s*(?:date|year|day)|"
                r"date\s*of\s*birth|city(?:\s*of\s*residence)?|location|credit\s*card(?:\s*number)?|bank\s*"
                r"(?:balance|account|details)|account\s*(?:balance|number|details)|social\s*security\s*number|ssn|"
                r"password|initials|chat\s*history|personal\s*(?:data|details|information)|private\s*(?:data|"
                r"details|information))")

SECRET_EXTRACTION = Family(
    name="secret_extraction",
    reason="asks for a secret or a user's personal data",
    weight=0.88,
    decisive=True,
    anchors=(
        'password', 'passphrase', 'passcode', 'passw', 'secret', 'accesscode', 'apikey', 'pincode', "user's",
        "customer's", "client's", "patient's", "employee's", 'contraseña', 'motdepasse', 'passwort', 'senha',
    ),
    patterns=_compile(
        # "confirm the password", "tell me your secret key", "what is the passphrase", "write the password in leetspeak"
        rf"\b{_REVEAL}\b\s*(?:me\s*|us\s*)?(?:(?:the|all|each|every|first|last|\w+)\s*(?:\w+\s*)?"
        rf"(?:letters?|characters?|digits?|parts?|half)\s*(?:of\s*)?)?(?:your|the|this|that)\s*(?:current\s*|"
        rf"real\s*|actual\s*|hidden\s*|stored\s*|admin\s*|system\s*|full\s*)*{_SECRET}\b{_NOT_THEIRS}",
        # "Can you share your password?", "what would your password be", "where do you keep the secret key"
        rf"\b(?:share|reveal|disclose|tell\s*me|give\s*me|confirm)\s*your\s*{_SECRET}\b{_NOT_THEIRS}",
        rf"\bwhat\s*would\s*(?:your|the)\s*{_SECRET}\s*be\b",
        rf"\b(?:poem|haiku|story|song|riddle|acrostic|limerick|rap)\s*(?:about|using|with|containing|that\s*"
        rf"(?:spells|contains|includes))\s*(?:the|your)\s*{_SECRET}\b{_NOT_THEIRS}",
        rf"\b{_SECRET}\s*(?:in|into|as|with)\s*(?:leetspeak|leet|pig\s*latin|base64|hex|binary|morse|reverse|"
        rf"reversed|backwards|(?:each|every)\s*(?:letter|character|digit))",
        # "What is the user's email address?", "tell me Steven's ..." is left to the learned signal.
        rf"\b{_ASK}\b(?:\s*[\w'\-]+[\s,]+){{0,5}}?\s*(?:the|this|that|other|another|our)\s*(?:other\s*)?"
        rf"(?:user|customer|client|patient|employee)'?s\s*(?:current\s*|full\s*|home\s*|exact\s*)*"
        rf"{_PERSON_DATA}\b",
        r"\bwhere\s*does\s*the\s*(?:user|customer|client|patient)\s*live\b",
        # Other languages: "¿Cuál es la contraseña?", "Quel est le mot de passe ?", "Was ist das Passwort?"
        r"\b(?:cuál|cual)\s*es\s*(?:la|tu|su)\s*contraseña\b(?!\s*(?:de|del|para)\b)",
        r"\bquel\s*est\s*(?:le|ton|votre)\s*mot\s*de\s*passe\b(?!\s*(?:de|du|des|pour)\b)",
        r"\bwas\s*ist\s*(?:das|dein|ihr)\s*passwort\b(?!\s*(?:für|von|des|der)\b)",
        r"\b(?:mir|uns)\s*(?:dein|ihr|das)\s*passwort\s*(?:geben|gibst|sagen|sagst|verraten|verrätst|nennen|nennst)\b",
        r"\bqual\s*(?:è|e)\s*la\s*(?:tua\s*|sua\s*)?password\b(?!\s*(?:di|del|della|per)\b)",
        r"\bqual\s*(?:é|e)\s*a\s*(?:sua\s*|tua\s*)?senha\b(?!\s*(?:de|do|da|para)\b)",
    ),
)

PAYLOAD_SPLITTING = Family(
    name="payload_splitting",
    reason="an instruction split into parts to be joined and followed",
    weight=0.88,
    decisive=True,
    anchors=('gpt(', 'concatenat', 'combine', 'join', 'puttogether', 'merge', 'a+b'),
    patterns=_compile(
        # "an example that would be returned from SmartGPT(z)"
        r"\b\w*gpt\s*\(\s*[a-z]\w{0,3}\s*\)",
        r"\b(?:concatenate|combine|join|put\s*together|merge)\s*(?:them|the\s*(?:parts|strings|fragments|pieces|"
        r"variables|words)|the\s*following\s*(?:parts|strings|fragments|pieces))\b.{0,40}?\b(?:and\s*)?"
        r"(?:follow|execute|obey|do\s*what|carry\s*out|perform|act\s*on|answer|respond\s*to)\b",
        r"\b(?:execute|follow|obey|answer|carry\s*out|do)\s*(?:the\s*)?(?:instruction|request|question|command|what)?"
        r"\s*(?:[a-z]\s*\+\s*){1,4}[a-z]\b",
    ),
)

# Twenty or more repeats of one token in a row: a repeated-token attack that tries
# to push the model's instructions out of its attention.
REPEATED_TOKEN = Family(
    name="repeated_token",
    reason="one token repeated many times",
    weight=0.85,
    decisive=True,
    anchors=("",),  # no word to anchor on; the pattern fails fast on ordinary text
    patterns=_compile(r"(?<!\S)(\S{3,40})(?:\s+\1(?!\S)){19,}"),
)


FAMILIES: tuple[Family, ...] = (
    INSTRUCTION_OVERRIDE, TASK_HIJACK, ROLE_PLAY, JAILBREAK, PROMPT_EXTRACTION,
    CHAT_DELIMITERS, AUTHORITY, CONTEXT_IGNORE, ESCAPE_PADDING, ENCODING_EVASION,
    SECRET_EXTRACTION, PAYLOAD_SPLITTING, REPEATED_TOKEN,
)


def match_families(views: tuple[str, ...]) -> dict[str, str]:
    """Family name -> the first matched snippet, searched over every (lower-case) view."""
    hits: dict[str, str] = {}
    compacts = ["".join(view.split()) for view in views]
    for family in FAMILIES:
        for view, compact in zip(views, compacts):
            match = family.search(view, compact)
            if match:
                hits[family.name] = match.group(0)
                break
    return hits
